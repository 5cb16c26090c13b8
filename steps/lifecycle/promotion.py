"""Promotion: move the `champion` alias between registered versions, gated, serialized, verified and audited.

A move is: take the promotion lock -> read the champion -> set the alias -> read it back (read-after-write)
-> append one audit entry -> release the lock.

Audit trail: one registered-model tag per move, key `audit.<seq>.<random>`, value a JSON object (time, user,
action, from_version, to_version, reason, metaflow_run, gate). One tag per entry keeps each value far below
MLflow's 100,000-character tag limit however long the history grows, and an append never rewrites an
earlier entry, so no entry can be lost to a concurrent writer.

Lock: without one, two processes promoting at once could both read champion v1 and both record "from v1".
MLflow has no compare-and-set, but writing one tag is atomic and reading a registered model returns all its
tags at once. That is enough for Lamport's bakery lock, kept in tags of the registered model itself (so no
lock object ever shows up in the registry): a contender writes `reviewflow.lock.<id>` = "choosing", then its
ticket (one more than the highest it sees), then waits until no other contender is choosing and none holds
a smaller (ticket, id); it deletes its tag to release. An entry older than `stale_after` seconds (its holder
died) is removed by whoever sees it; a waiter gives up after `timeout` seconds, saying who holds the lock.
"""
from __future__ import annotations

import json
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from steps.runtime import faults
from steps.runtime.errors import ReviewflowError
from steps.runtime.tracking import CHAMPION, alias_version  # promotion.CHAMPION/alias_version: flows and tests use them

AUDIT_PREFIX = "audit."
REASON_LIMIT = 2000  # characters of a user's reason kept in an audit entry
ACTIONS = ("auto", "promote", "force", "rollback")


class GateFailed(ReviewflowError):
    """The candidate did not pass the promotion gate (and the move was not forced)."""


class ChampionChanged(ReviewflowError):
    """The champion moved between scoring the candidate against it and taking the promotion lock."""


@dataclass
class Move:
    name: str
    action: str
    from_version: int | None
    to_version: int
    changed: bool  # False when `to_version` already was champion: nothing moved, nothing recorded
    entry: dict | None = None


def current_user() -> str:
    return os.environ.get("METAFLOW_USER") or os.environ.get("USERNAME") or os.environ.get("USER") or "unknown"


def resolve_version(mlflow_client, name: str, version: str | int) -> int:
    """A version given as a number or an alias (challenger, champion), checked to exist."""
    from mlflow.exceptions import MlflowException

    text = str(version).strip()
    if text.isdigit():
        try:
            return int(mlflow_client.get_model_version(name, text).version)
        except MlflowException:
            raise ReviewflowError(f"--version {text}: registered model '{name}' has no version {text}; "
                                  f"list them with `mlflow models` or the MLflow UI (Models tab)") from None
    found = alias_version(mlflow_client, name, text)
    if found is None:
        raise ReviewflowError(f"--version {text}: registered model '{name}' has no alias '{text}'; "
                              f"give a version number or one of: challenger, champion")
    return found


# --- lock ----------------------------------------------------------------------------------------------------
LOCK_PREFIX = "reviewflow.lock."


def _lock_entries(mlflow_client, name: str) -> dict[str, dict]:
    """The promotion-lock entries in the tags of registered model `name`: {tag key: entry}."""
    entries = {}
    for key, value in mlflow_client.get_registered_model(name).tags.items():
        if key.startswith(LOCK_PREFIX):
            try:
                entries[key] = json.loads(value)
            except json.JSONDecodeError:
                entries[key] = {"time": 0.0, "holder": "unreadable entry"}  # stale at once
    return entries


@contextmanager
def promotion_lock(mlflow_client, name: str, timeout: float = 120.0, stale_after: float = 600.0,
                   poll: float = 0.2):
    """Hold the promotion lock of registered model `name` for the duration of the block."""
    from mlflow.exceptions import MlflowException

    key = f"{LOCK_PREFIX}{uuid.uuid4().hex[:16]}"
    holder = f"{current_user()}@{socket.gethostname()} pid {os.getpid()}"

    def write(**entry) -> None:
        entry = {"holder": holder, "time": time.time(), **entry}
        mlflow_client.set_registered_model_tag(name, key, json.dumps(entry, sort_keys=True))

    try:
        write(choosing=True)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ReviewflowError(f"registered model '{name}' does not exist in this MLflow store; nothing to "
                                  "promote or roll back") from None
        raise
    try:
        ticket = 1 + max((int(e.get("ticket", 0)) for k, e in _lock_entries(mlflow_client, name).items()
                          if k != key), default=0)
        write(ticket=ticket)
        deadline = time.monotonic() + timeout
        while True:
            ahead = []
            for other, entry in _lock_entries(mlflow_client, name).items():
                if other == key:
                    continue
                age = time.time() - float(entry.get("time", 0.0))
                if age > stale_after:  # its holder died mid-promotion
                    _delete_tag(mlflow_client, name, other)
                    continue
                if entry.get("choosing") or (int(entry.get("ticket", 0)), other) < (ticket, key):
                    ahead.append((entry.get("holder", "unknown holder"), age))
            if not ahead:
                break
            if time.monotonic() > deadline:
                who, age = ahead[0]
                raise ReviewflowError(
                    f"registered model '{name}': another promotion holds the lock ({who}, {age:.0f} s). Wait "
                    f"for it and run again; if that process died, its tag {LOCK_PREFIX}* on '{name}' expires "
                    f"after {stale_after:.0f} s, or delete that tag (MLflow UI, Models, '{name}', Tags).")
            time.sleep(poll * (0.5 + random.random()))
        yield
    finally:
        _delete_tag(mlflow_client, name, key)


def _delete_tag(mlflow_client, name: str, key: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.delete_registered_model_tag(name, key)
    except MlflowException:
        pass


# --- audit trail ---------------------------------------------------------------------------------------------
def history(mlflow_client, name: str) -> list[dict]:
    """The audit trail of `name`, oldest move first."""
    from mlflow.exceptions import MlflowException

    try:
        tags = mlflow_client.get_registered_model(name).tags
    except MlflowException:
        raise ReviewflowError(f"--registered-model {name}: no such registered model in this MLflow store "
                              f"(MLFLOW_TRACKING_URI={os.environ.get('MLFLOW_TRACKING_URI', 'unset')})") from None
    entries = []
    for key, value in tags.items():
        if not key.startswith(AUDIT_PREFIX):
            continue
        try:
            entry = json.loads(value)
        except json.JSONDecodeError:
            entry = {"seq": int(key.split(".")[1]), "action": "unreadable", "reason": value[:200]}
        entry["key"] = key
        entries.append(entry)
    return sorted(entries, key=lambda e: (int(e.get("seq", 0)), e.get("time", ""), e["key"]))


def append_audit(mlflow_client, name: str, entry: dict) -> dict:
    """Add one entry (under the promotion lock: its seq follows the last one) and read it back."""
    seq = max((int(e.get("seq", 0)) for e in history(mlflow_client, name)), default=0) + 1
    key = f"{AUDIT_PREFIX}{seq:06d}.{uuid.uuid4().hex[:8]}"
    entry = {"seq": seq, **entry}
    mlflow_client.set_registered_model_tag(name, key, json.dumps(entry, sort_keys=True, default=str))
    if key not in mlflow_client.get_registered_model(name).tags:
        raise ReviewflowError(f"registered model '{name}': audit entry {key} was not stored; the alias moved "
                              f"to v{entry['to_version']} but is unrecorded, record it by promoting again")
    return {**entry, "key": key}


def champion_lineage(entries: list[dict]) -> list[int]:
    """The champions in the order they were installed, rolled-back ones removed: the last is the champion."""
    stack: list[int] = []
    for entry in entries:
        source, target = entry.get("from_version"), entry.get("to_version")
        if target is None:
            continue
        if entry.get("action") == "rollback":
            if stack and stack[-1] == source:
                stack.pop()
            if not stack or stack[-1] != target:
                stack.append(target)
        else:
            if source is not None and (not stack or stack[-1] != source):
                stack.append(source)  # a champion set before reviewflow kept an audit trail
            stack.append(target)
    return stack


# --- moves ---------------------------------------------------------------------------------------------------
def _set_alias_verified(mlflow_client, name: str, alias: str, version: int, attempts: int = 3) -> None:
    """Set the alias and read it back; a registry that does not show our write is an error, not a success."""
    seen = None
    for _ in range(attempts):
        mlflow_client.set_registered_model_alias(name, alias, str(version))
        seen = alias_version(mlflow_client, name, alias)
        if seen == version:
            return
        time.sleep(0.2)
    raise ReviewflowError(f"registered model '{name}': alias '{alias}' reads v{seen} after setting v{version}; "
                          "something outside reviewflow's promotion lock is moving it. Check who, then promote again.")


def _gate_record(verdict, force: bool) -> dict:
    if verdict is None:
        return {"gate": "not checked (forced)" if force else "not checked"}
    state = "passed" if verdict.passed else "failed"
    return {"gate": f"{state} (forced)" if force and not verdict.passed else state,
            "gate_reasons": "; ".join(verdict.reasons)}


def promote(mlflow_client, name: str, version: int, *, reason: str = "", metaflow_run: str = "",
            verdict=None, force: bool = False, action: str | None = None, user: str | None = None,
            lock_timeout: float = 120.0) -> Move:
    """Make `version` the champion if `verdict` passed (or `force`, which needs a reason); record the move.

    `verdict` must have been decided against the champion that is current when the lock is taken; if the
    champion moved meanwhile, ChampionChanged is raised and nothing changes.
    """
    version = resolve_version(mlflow_client, name, version)
    action = action or ("force" if force else "promote")
    if force and not reason.strip():
        raise ReviewflowError("--force needs --reason: say why the gate is overridden (it goes in the audit trail)")
    already = verdict is None and alias_version(mlflow_client, name, CHAMPION) == version  # nothing to gate
    if not force and not already and (verdict is None or not verdict.passed):
        why = "; ".join(verdict.reasons) if verdict is not None else "the gate was not checked"
        raise GateFailed(f"v{version} of '{name}' did not pass the promotion gate: {why}. It stays challenger. "
                         "To override, run again with --force --reason '...'.")
    with promotion_lock(mlflow_client, name, timeout=lock_timeout):
        current = alias_version(mlflow_client, name, CHAMPION)
        if current == version:
            return _record_unrecorded(mlflow_client, name, version, action, reason, metaflow_run, verdict, force,
                                      user)
        if verdict is not None and not force and verdict.champion_version != current:
            raise ChampionChanged(
                f"the champion of '{name}' is now v{current}, but v{version} was compared with "
                f"{'no champion' if verdict.champion_version is None else f'v{verdict.champion_version}'}; "
                "run the promotion again to compare with the current champion")
        _set_alias_verified(mlflow_client, name, CHAMPION, version)
        faults.inject("promote/after_alias")  # test hook: a crash between moving the alias and recording it
        entry = _audit_move(mlflow_client, name, action, current, version, (reason or "").strip()[:REASON_LIMIT],
                            metaflow_run, _gate_record(verdict, force), user)
    return Move(name, action, current, version, changed=True, entry=entry)


def _audit_move(mlflow_client, name: str, action: str, from_version, to_version: int, reason: str,
                metaflow_run: str, gate: dict, user: str | None) -> dict:
    """Append one champion move to the audit trail; `gate` holds the gate's fields. Returns the entry."""
    return append_audit(mlflow_client, name, {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "user": user or current_user(),
        "action": action,
        "from_version": from_version,
        "to_version": to_version,
        "reason": reason,
        "metaflow_run": metaflow_run,
        **gate,
    })


def _record_unrecorded(mlflow_client, name: str, version: int, action: str, reason: str, metaflow_run: str,
                       verdict, force: bool, user: str | None) -> Move:
    """`version` is champion already. Normally the trail says so and nothing happens; if the last recorded
    champion is another version, an earlier attempt moved the alias and died before recording the move (a
    retried or resumed register, a repeated promotion): record it now, once, from the last recorded champion."""
    lineage = champion_lineage(history(mlflow_client, name))
    if lineage and lineage[-1] == version:
        return Move(name, action, version, version, changed=False)
    source = lineage[-1] if lineage else None
    note = (f"recorded late: champion already pointed to v{version} but the audit trail did not show the move; an "
            "attempt that stopped after moving the alias, or a move made outside reviewflow")
    entry = _audit_move(mlflow_client, name, action, source, version,
                        f"{(reason or '').strip()[:REASON_LIMIT]} ({note})".lstrip(), metaflow_run,
                        _gate_record(verdict, force), user)
    return Move(name, action, source, version, changed=True, entry=entry)


def rollback(mlflow_client, name: str, *, reason: str = "", metaflow_run: str = "", user: str | None = None,
             lock_timeout: float = 120.0) -> Move:
    """Move `champion` back to the champion before the current one, as the audit trail tells it."""
    from mlflow.exceptions import MlflowException

    with promotion_lock(mlflow_client, name, timeout=lock_timeout):
        current = alias_version(mlflow_client, name, CHAMPION)
        lineage = champion_lineage(history(mlflow_client, name))
        if current is None:
            raise ReviewflowError(f"registered model '{name}' has no champion; there is nothing to roll back")
        if not lineage or lineage[-1] != current:
            raise ReviewflowError(
                f"the champion of '{name}' is v{current}, but the audit trail's last champion is "
                f"{'none' if not lineage else f'v{lineage[-1]}'}: the alias was moved outside reviewflow. "
                "Choose the version yourself: promote_flow.py run --version N --force --reason '...'")
        if len(lineage) < 2:
            raise ReviewflowError(f"v{current} is the first recorded champion of '{name}'; there is no earlier "
                                  "champion to roll back to")
        target = lineage[-2]
        try:
            mlflow_client.get_model_version(name, str(target))
        except MlflowException:
            raise ReviewflowError(f"the previous champion v{target} of '{name}' no longer exists (deleted); "
                                  "promote a version explicitly with --version N") from None
        _set_alias_verified(mlflow_client, name, CHAMPION, target)
        entry = _audit_move(mlflow_client, name, "rollback", current, target, (reason or "").strip()[:REASON_LIMIT],
                            metaflow_run, {"gate": "not checked (rollback to an earlier champion)"}, user)
    return Move(name, "rollback", current, target, changed=True, entry=entry)


def history_lines(entries: list[dict]) -> list[str]:
    """The audit trail as a fixed-width table for a terminal."""
    if not entries:
        return ["(no promotions recorded)"]
    header = f"{'#':>3}  {'time (UTC)':<23}  {'user':<16}  {'action':<8}  {'from':>4} -> {'to':<4}  " \
             f"{'gate':<8}  {'metaflow run':<28}  reason"
    lines = [header, "-" * len(header)]
    for e in entries:
        source = "-" if e.get("from_version") is None else f"v{e['from_version']}"
        gate = str(e.get("gate", ""))
        gate = "forced" if "forced" in gate else gate if gate in ("passed", "failed") else "-"
        lines.append(f"{e.get('seq', ''):>3}  {str(e.get('time', ''))[:23]:<23}  {str(e.get('user', ''))[:16]:<16}  "
                     f"{e.get('action', ''):<8}  {source:>4} -> v{e.get('to_version', '?')!s:<3}  "
                     f"{gate:<8}  {str(e.get('metaflow_run', ''))[:28]:<28}  {e.get('reason', '')}")
    return lines


def check_gate(mlflow_client, name: str, version: int, texts, labels, min_f1: float, max_regression: float,
               require_significance: float = 0.0):
    """Re-check the gate for `version` now: score it and the current champion (each with its own registered
    pyfunc) on the same labelled texts. Returns (verdict, comparison or None)."""
    from steps.evaluation.evaluate import score_registered_model
    from steps.evaluation.gate import judge_evaluation
    from steps.evaluation.metrics import classification_metrics, compare_with_champion

    champion = alias_version(mlflow_client, name, CHAMPION)
    probs = score_registered_model(f"models:/{name}/{version}", texts)
    comparison = None
    if champion is not None and champion != version:
        champion_probs = score_registered_model(f"models:/{name}/{champion}", texts)
        comparison = compare_with_champion(labels, probs, champion_probs, champion)
    elif champion == version:
        comparison = compare_with_champion(labels, probs, probs, champion)
    verdict = judge_evaluation(classification_metrics(labels, probs), champion, comparison, min_f1, max_regression,
                               require_significance)
    tags = mlflow_client.get_model_version(name, str(version)).tags
    if "gate.baseline_f1" in tags:  # the TF-IDF baseline on the same test rows, as the version was registered
        from steps.evaluation.gate import with_baseline

        verdict = with_baseline(verdict, float(tags["gate.baseline_f1"]), tags.get("gate.ignore_baseline") == "true")
    return verdict, comparison


COPIED_FROM = "copied_from"
KEPT_GATE_TAGS = ("gate.baseline_f1", "gate.ignore_baseline")  # the baseline's F1 on the version's own test rows


def copy_into(mlflow_client, source_uri: str, target: str) -> tuple[int, bool]:
    """Copy the registered version `source_uri` (models:/<name>/<version> or models:/<name>@<alias>) into the
    registered model `target`, with its tags and `copied_from=<name>/<version>`: (target version, newly copied).
    A version copied from the same source before is reused, so a repeated promotion makes no second copy."""
    import re

    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", source_uri.strip())
    if not match:
        raise ReviewflowError(f"--source {source_uri}: expected models:/<registered model>/<version> or "
                              "models:/<registered model>@<alias>")
    name, alias, number = match.groups()
    if name == target:
        raise ReviewflowError(f"--source {source_uri} is a version of '{target}' itself; use --version instead")
    version = resolve_version(mlflow_client, name, number or alias)
    source = f"{name}/{version}"
    try:
        earlier = mlflow_client.search_model_versions(f"name = '{target}' and tags.{COPIED_FROM} = '{source}'")
    except MlflowException:
        earlier = []
    if earlier:
        return min(int(v.version) for v in earlier), False
    original = mlflow_client.get_model_version(name, str(version))
    copy = mlflow_client.copy_model_version(f"models:/{name}/{version}", target)
    for key, value in {**original.tags, COPIED_FROM: source}.items():
        # the gate is decided anew, against the target's champion, under the baseline rule the version was trained with
        if key in KEPT_GATE_TAGS or not key.startswith(("gate", "mlflow.")):
            mlflow_client.set_model_version_tag(target, copy.version, key, value)
    return int(copy.version), True
