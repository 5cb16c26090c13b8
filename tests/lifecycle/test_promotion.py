"""The champion's lifecycle on a real MLflow registry (SQLite): gate at registration, promote, force, rollback,
audit trail, the promotion lock, and two processes promoting at the same time."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from steps.evaluation import gate
from steps.lifecycle import promotion, registry
from steps.runtime import tracking
from steps.runtime.errors import ReviewflowError
from tests.fixtures import served_model_uri

NAME = "review-classifier"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(tracking_uri):
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def register(uri, classifier_dir, run_id, f1, champion_f1=None, champion_version=None, promote_mode="auto"):
    """What ReviewFlow's register step does for a model whose test F1 is `f1` (the champion's: champion_f1)."""
    verdict = gate.judge(f1, 0.75, 0.0, champion_f1, champion_version)
    parent = tracking.start_flow_run(uri, "ReviewFlow", str(run_id), {})
    with tracking.step_run(uri, parent, "register", f"ReviewFlow/{run_id}/register/9") as run:
        return registry.register(run.client, NAME, served_model_uri(classifier_dir), f"ReviewFlow/{run_id}",
                                 {"test_f1": f1}, verdict=verdict, promote_mode=promote_mode)


def champion(client):
    return promotion.alias_version(client, NAME, promotion.CHAMPION)


def test_first_model_becomes_champion_and_the_move_is_audited(tracking_uri, client, classifier_dir):
    reg = register(tracking_uri, classifier_dir, 1, f1=0.82)
    assert (reg.version, reg.gate, reg.promoted, reg.aliases) == (1, "passed", True, ["challenger", "champion"])
    tags = client.get_model_version(NAME, "1").tags
    assert tags["gate"] == "passed" and tags["gate.champion_version"] == "none" and tags["gate.promote"] == "auto"
    [entry] = promotion.history(client, NAME)
    assert (entry["action"], entry["from_version"], entry["to_version"]) == ("auto", None, 1)
    assert entry["metaflow_run"] == "ReviewFlow/1" and entry["user"] == "reviewflow-tests" and entry["time"]
    assert entry["gate"] == "passed" and "F1 0.8200 >= floor 0.75" in entry["reason"]
    assert [m.name for m in client.search_registered_models()] == [NAME]  # the lock is gone


def test_a_first_model_under_the_floor_is_not_champion(tracking_uri, client, classifier_dir):
    reg = register(tracking_uri, classifier_dir, 1, f1=0.60)
    assert (reg.gate, reg.aliases) == ("failed", ["challenger"]) and champion(client) is None
    assert promotion.history(client, NAME) == []


def test_better_challenger_is_promoted_worse_one_stays_challenger(tracking_uri, client, classifier_dir):
    register(tracking_uri, classifier_dir, 1, f1=0.80)
    better = register(tracking_uri, classifier_dir, 2, f1=0.85, champion_f1=0.80, champion_version=1)
    assert better.aliases == ["challenger", "champion"] and champion(client) == 2
    worse = register(tracking_uri, classifier_dir, 3, f1=0.84, champion_f1=0.85, champion_version=2)
    assert (worse.version, worse.gate, worse.promoted, worse.aliases) == (3, "failed", False, ["challenger"])
    assert champion(client) == 2 and promotion.alias_version(client, NAME, "challenger") == 3
    tags = client.get_model_version(NAME, "3").tags
    assert tags["gate"] == "failed" and tags["gate.f1_delta"] == "-0.010000" and tags["gate.champion_f1"] == "0.850000"
    assert "exceeds the allowed regression" in tags["gate.reasons"]
    assert [(e["from_version"], e["to_version"]) for e in promotion.history(client, NAME)] == [(None, 1), (1, 2)]


def test_promote_never_only_registers(tracking_uri, client, classifier_dir):
    reg = register(tracking_uri, classifier_dir, 1, f1=0.95, promote_mode="never")
    assert reg.gate == "passed" and reg.aliases == ["challenger"] and champion(client) is None
    assert client.get_model_version(NAME, "1").tags["gate.promote"] == "never"


def test_registration_retry_after_promotion_neither_duplicates_nor_reaudits(tracking_uri, client, classifier_dir):
    first = register(tracking_uri, classifier_dir, 1, f1=0.9)
    again = register(tracking_uri, classifier_dir, 1, f1=0.9)  # a retried/resumed register step
    assert (again.version, again.created, again.promoted, again.aliases) == (1, False, False,
                                                                              ["challenger", "champion"])
    assert first.created and len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert len(promotion.history(client, NAME)) == 1


def test_a_champion_that_moved_since_evaluation_blocks_auto_promotion(tracking_uri, client, classifier_dir):
    register(tracking_uri, classifier_dir, 1, f1=0.80)
    register(tracking_uri, classifier_dir, 2, f1=0.90, champion_f1=0.80, champion_version=1)
    # run 3 was evaluated while v1 was champion: its comparison is stale now that v2 is
    stale = register(tracking_uri, classifier_dir, 3, f1=0.85, champion_f1=0.80, champion_version=1)
    assert stale.gate == "failed" and champion(client) == 2
    assert "champion of 'review-classifier' is now v2" in client.get_model_version(NAME, "3").tags["gate.reasons"]


def test_gated_forced_and_refused_promotions(tracking_uri, client, classifier_dir):
    register(tracking_uri, classifier_dir, 1, f1=0.90)
    register(tracking_uri, classifier_dir, 2, f1=0.70, champion_f1=0.90, champion_version=1)
    failed = gate.judge(0.70, champion_f1=0.90, champion_version=1)
    with pytest.raises(promotion.GateFailed, match="did not pass the promotion gate.*--force"):
        promotion.promote(client, NAME, "challenger", verdict=failed)
    with pytest.raises(ReviewflowError, match="--force needs --reason"):
        promotion.promote(client, NAME, 2, verdict=failed, force=True)
    assert champion(client) == 1 and len(promotion.history(client, NAME)) == 1

    move = promotion.promote(client, NAME, "challenger", verdict=failed, force=True, reason="hotfix for refunds",
                             metaflow_run="PromoteFlow/7", user="alice")
    assert (move.from_version, move.to_version, move.changed) == (1, 2, True) and champion(client) == 2
    entry = promotion.history(client, NAME)[-1]
    assert (entry["action"], entry["user"], entry["reason"], entry["gate"]) == (
        "force", "alice", "hotfix for refunds", "failed (forced)")
    assert entry["metaflow_run"] == "PromoteFlow/7" and entry["seq"] == 2

    back = promotion.promote(client, NAME, 1, verdict=gate.judge(0.90, champion_f1=0.70, champion_version=2))
    assert (back.action, back.from_version, back.to_version) == ("promote", 2, 1)
    same = promotion.promote(client, NAME, 1, verdict=gate.judge(0.90, champion_f1=0.90, champion_version=1))
    assert not same.changed and len(promotion.history(client, NAME)) == 3  # nothing moved, nothing recorded
    with pytest.raises(ReviewflowError, match="has no version 9"):
        promotion.promote(client, NAME, 9, force=True, reason="typo")


def test_rollback_walks_back_through_earlier_champions(tracking_uri, client, classifier_dir):
    register(tracking_uri, classifier_dir, 1, f1=0.80)
    register(tracking_uri, classifier_dir, 2, f1=0.85, champion_f1=0.80, champion_version=1)
    register(tracking_uri, classifier_dir, 3, f1=0.60, champion_f1=0.85, champion_version=2)
    promotion.promote(client, NAME, 3, force=True, reason="try the small model in production")
    assert champion(client) == 3

    first = promotion.rollback(client, NAME, reason="latency complaints", user="bob")
    assert (first.from_version, first.to_version) == (3, 2) and champion(client) == 2
    second = promotion.rollback(client, NAME, reason="v2 too")
    assert (second.from_version, second.to_version) == (2, 1) and champion(client) == 1
    with pytest.raises(ReviewflowError, match="first recorded champion"):
        promotion.rollback(client, NAME)
    trail = promotion.history(client, NAME)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in trail] == [
        ("auto", None, 1), ("auto", 1, 2), ("force", 2, 3), ("rollback", 3, 2), ("rollback", 2, 1)]
    assert trail[3]["user"] == "bob" and trail[3]["reason"] == "latency complaints"
    assert [e["seq"] for e in trail] == [1, 2, 3, 4, 5]
    lines = promotion.history_lines(trail)
    assert "rollback" in lines[-1] and "v2 -> v1" in lines[-1]


def test_rollback_refuses_when_the_alias_was_moved_outside_reviewflow(tracking_uri, client, classifier_dir):
    register(tracking_uri, classifier_dir, 1, f1=0.80)
    register(tracking_uri, classifier_dir, 2, f1=0.85, champion_f1=0.80, champion_version=1)
    client.set_registered_model_alias(NAME, "champion", "1")  # someone used the MLflow UI
    with pytest.raises(ReviewflowError, match="moved outside reviewflow"):
        promotion.rollback(client, NAME)


def test_champion_lineage_from_an_audit_trail():
    def e(action, source, target):
        return {"action": action, "from_version": source, "to_version": target}

    assert promotion.champion_lineage([]) == []
    assert promotion.champion_lineage([e("auto", None, 1), e("promote", 1, 2), e("force", 2, 3)]) == [1, 2, 3]
    assert promotion.champion_lineage([e("auto", None, 1), e("promote", 1, 2), e("rollback", 2, 1),
                                       e("promote", 1, 3)]) == [1, 3]
    # a champion set before the audit trail existed still counts as the one before
    assert promotion.champion_lineage([e("promote", 4, 5)]) == [4, 5]


def test_the_lock_serializes_and_a_dead_holders_lock_expires(tracking_uri, client, classifier_dir):
    register(tracking_uri, classifier_dir, 1, f1=0.80)
    with promotion.promotion_lock(client, NAME), \
            pytest.raises(ReviewflowError, match="another promotion holds the lock"):
            promotion.promote(client, NAME, 1, force=True, reason="x", lock_timeout=0.5)
    # a holder that died left its lock entry behind: it is broken once older than stale_after
    client.set_registered_model_tag(NAME, f"{promotion.LOCK_PREFIX}dead", json.dumps(
        {"ticket": 1, "time": time.time(), "holder": "a process that died"}))
    with pytest.raises(ReviewflowError, match="another promotion holds the lock \\(a process that died"), \
            promotion.promotion_lock(client, NAME, timeout=0.5, stale_after=600.0):
        pass
    with promotion.promotion_lock(client, NAME, timeout=5, stale_after=0.0):
        pass
    assert [m.name for m in client.search_registered_models()] == [NAME]  # no lock object in the registry
    assert not [k for k in client.get_registered_model(NAME).tags if k.startswith(promotion.LOCK_PREFIX)]


def _race(uri, tmp_path, versions, mode):
    barrier = tmp_path / f"barrier-{mode}"
    barrier.mkdir()
    contender = [sys.executable, "-m", "tests.lifecycle.promotion_race"]
    procs = [subprocess.Popen([*contender, uri, NAME, str(v), mode, str(barrier), str(i), str(len(versions))],
                              cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i, v in enumerate(versions)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        results.append((proc.returncode, out))
    return results


def test_two_processes_promoting_at_once_leave_one_champion_and_a_complete_chain(tracking_uri, client,
                                                                                 classifier_dir, tmp_path):
    register(tracking_uri, classifier_dir, 1, f1=0.80)
    register(tracking_uri, classifier_dir, 2, f1=0.70, champion_f1=0.80, champion_version=1)
    register(tracking_uri, classifier_dir, 3, f1=0.70, champion_f1=0.80, champion_version=1)

    results = _race(tracking_uri, tmp_path, [2, 3], "force")
    assert [code for code, _ in results] == [0, 0], results
    trail = promotion.history(client, NAME)
    moves = trail[1:]
    assert sorted(e["to_version"] for e in moves) == [2, 3]  # both recorded
    assert moves[0]["from_version"] == 1 and moves[1]["from_version"] == moves[0]["to_version"]  # one chain
    assert champion(client) == moves[-1]["to_version"]
    assert [e["seq"] for e in trail] == [1, 2, 3]

    # gated contenders that both compared against the same champion: exactly one may move it
    results = _race(tracking_uri, tmp_path, [1, 2 if champion(client) == 3 else 3], "gated")
    assert sorted(code for code, _ in results) == [0, 3], results
    assert any("run the promotion again" in out for _, out in results)
    trail = promotion.history(client, NAME)
    assert len(trail) == 4 and champion(client) == trail[-1]["to_version"]
    assert trail[-1]["from_version"] == trail[-2]["to_version"]
    assert [m.name for m in client.search_registered_models()] == [NAME]
    assert all(json.loads(v) for k, v in client.get_registered_model(NAME).tags.items() if k.startswith("audit."))


def _register_model(uri, classifier_dir, metaflow_run, trained_by, f1, champion_f1=None, champion_version=None):
    """ReviewFlow's register step in Metaflow run `metaflow_run` for the model trained by task `trained_by`."""
    verdict = gate.judge(f1, 0.75, 0.0, champion_f1, champion_version)
    parent = tracking.start_flow_run(uri, "ReviewFlow", metaflow_run.split("/")[-1], {})
    with tracking.step_run(uri, parent, "register", f"{metaflow_run}/register/9") as run:
        return registry.register(run.client, NAME, served_model_uri(classifier_dir, trained_by), metaflow_run,
                                 {"test_f1": f1}, verdict=verdict, trained_by=trained_by)


def test_a_crash_between_registering_and_aliasing_is_completed_by_the_resumed_run(
        tracking_uri, client, classifier_dir, monkeypatch):
    from steps.runtime import faults

    register(tracking_uri, classifier_dir, 1, f1=0.80)
    monkeypatch.setenv(faults.FAIL_AT, "register/after_version")
    with pytest.raises(faults.InjectedFault):
        _register_model(tracking_uri, classifier_dir, "ReviewFlow/2", "ReviewFlow/2/train/5", 0.9, 0.8, 1)
    version = client.get_model_version(NAME, "2")
    assert version.tags["trained_by"] == "ReviewFlow/2/train/5" and not version.aliases and champion(client) == 1
    monkeypatch.delenv(faults.FAIL_AT)
    # `resume` runs register in a new Metaflow run; the model (and its train task) is the one of run 2
    done = _register_model(tracking_uri, classifier_dir, "ReviewFlow/3", "ReviewFlow/2/train/5", 0.9, 0.8, 1)
    assert (done.version, done.created, done.promoted) == (2, False, True) and champion(client) == 2
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    trail = promotion.history(client, NAME)
    assert [(e["from_version"], e["to_version"]) for e in trail] == [(None, 1), (1, 2)]
    assert trail[-1]["metaflow_run"] == "ReviewFlow/3"
    # a model trained anew (another train task) is another version, even in the same flow lineage
    other = _register_model(tracking_uri, classifier_dir, "ReviewFlow/3", "ReviewFlow/3/train/7", 0.7, 0.9, 2)
    assert other.version == 3 and other.created


def test_a_champion_move_that_was_not_recorded_is_recorded_once_on_retry(
        tracking_uri, client, classifier_dir, monkeypatch):
    from steps.runtime import faults

    register(tracking_uri, classifier_dir, 1, f1=0.80)
    monkeypatch.setenv(faults.FAIL_AT, "promote/after_alias")
    with pytest.raises(faults.InjectedFault):
        register(tracking_uri, classifier_dir, 2, f1=0.90, champion_f1=0.80, champion_version=1)
    assert champion(client) == 2 and len(promotion.history(client, NAME)) == 1  # moved, but unrecorded
    monkeypatch.delenv(faults.FAIL_AT)
    for _ in range(2):  # the retry records the move; a further retry adds nothing
        again = register(tracking_uri, classifier_dir, 2, f1=0.90, champion_f1=0.80, champion_version=1)
        assert (again.version, again.created, again.aliases) == (2, False, ["challenger", "champion"])
    trail = promotion.history(client, NAME)
    assert [(e["from_version"], e["to_version"]) for e in trail] == [(None, 1), (1, 2)]
    assert "recorded late" in trail[-1]["reason"] and trail[-1]["gate"] == "passed"
    assert promotion.champion_lineage(trail) == [1, 2]
