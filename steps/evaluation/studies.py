"""TuneFlow's study (steps/evaluation/tune.py runs its trials): where it lives, what a later run may continue,
where it stands, and the trials whose worker died.

The study lives in Optuna's RDB storage, not in a process: by default a SQLite file beside the MLflow store's
(`optuna.db` next to `mlflow.db`); with `--storage` or REVIEWFLOW_STUDY_STORAGE any SQLAlchemy URL, e.g. the team
stack's PostgreSQL database that `infra/local/services.py start --db postgres` creates. So workers on other
machines (Argo pods) share it, and a later run continues it.

A worker whose process dies leaves its trial RUNNING; it is marked failed (and its recipe queued again once) by
the next worker that looks: at once when the dead worker ran on the same machine (its pid is gone), else when its
heartbeat is older than the grace period. A failed trial does not count against `--trials`.
"""
from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass

from steps.runtime.errors import ReviewflowError

HEARTBEAT_SECONDS = 20  # a running trial's heartbeat interval ...
GRACE_SECONDS = 90  # ... and how stale it may get before another worker marks the trial failed
PRUNE_AFTER_TRIALS = 4  # the pruner compares with the trials finished so far once there are this many
STUDY_DB = "optuna.db"
HOST_ATTR, PID_ATTR, STARTED_ATTR, RUN_ATTR = "host", "pid", "pid_started", "mlflow_run_id"
SURPLUS_ATTR = "not_run"


# --- where the study lives --------------------------------------------------------------------------------------
def _parsed(url: str):
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy raises ArgumentError, ValueError, ... for what does not parse
        return None
    return None if "@" in (parsed.host or "") else parsed  # a raw @ in a password: where it ends is a guess


def masked(url: str) -> str:
    """A storage URL fit for logs and params: its password, and any password in its query, replaced by ***; a
    value that does not parse as a URL is not echoed at all (it may be a password)."""
    parsed = _parsed(url)
    if parsed is None:
        return "<a value that is not a database URL>"
    query = {k: ("***" if "pass" in k.lower() else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


def scrubbed(text: str, url: str) -> str:
    """`text` (e.g. a driver's error) with the URL's password, and the URL itself, replaced by their masked forms."""
    parsed = _parsed(url)
    text = text.replace(url, masked(url))
    if parsed is not None and parsed.password:
        text = text.replace(str(parsed.password), "***")
    return text


def has_password(url: str) -> bool:
    parsed = _parsed(url)
    return parsed is not None and (parsed.password is not None or any("pass" in k.lower() for k in parsed.query))


def refuse_password_option(argv: list[str]) -> str | None:
    """For the launcher, before Metaflow stores any Parameter: why `--storage` may not be given as it is, or None.
    Flow parameters are kept with the run (and shown by `card view`, the Metaflow UI, ...); a password is not."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--storage=") else (
            argv[i + 1] if arg == "--storage" and i + 1 < len(argv) else None)
        if value and has_password(value):
            return ("--storage holds a password, and flow parameters are stored with the run: put the URL in "
                    "REVIEWFLOW_STUDY_STORAGE instead (infra/local/services.py writes it into services.env)")
    return None


def study_storage(explicit: str, tracking_uri: str) -> str:
    """The study's database: `explicit` (--storage), else REVIEWFLOW_STUDY_STORAGE, else a SQLite file beside the
    MLflow store's SQLite file. An MLflow server (http) has no file to sit beside: then it must be given."""
    url = explicit or os.environ.get("REVIEWFLOW_STUDY_STORAGE", "")
    if url:
        if "://" not in url or _parsed(url) is None:
            where = "--storage" if explicit else "REVIEWFLOW_STUDY_STORAGE"
            raise ReviewflowError(f"{where} is not a database URL ({masked(url)}); give e.g. sqlite:///studies.db or "
                                  "postgresql+psycopg2://user:password@host/optuna")
        return url
    if tracking_uri.startswith("sqlite:///"):
        store = tracking_uri[len("sqlite:///"):].split("?")[0]
        return f"sqlite:///{os.path.join(os.path.dirname(store) or '.', STUDY_DB)}"
    raise ReviewflowError(f"the MLflow store {tracking_uri} is not a SQLite file, so the study has no default "
                          "database: give --storage (a SQLAlchemy URL every worker reaches) or set "
                          "REVIEWFLOW_STUDY_STORAGE (infra/local/services.py writes it into services.env)")


def storage(url: str):
    """Optuna's RDB storage with heartbeats: a trial whose worker died is failed and its recipe queued once more."""
    import optuna

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: since 2.8
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors vary by driver; the URL is what to fix
        raise ReviewflowError(f"the study database {masked(url)} cannot be opened: "
                              f"{scrubbed(str(err).splitlines()[0], url)}") from None


def quiet_optuna() -> None:
    import optuna

    # our own lines say what happened, once (Optuna's "Trial 8 failed with value nan" would read like a crash)
    optuna.logging.set_verbosity(optuna.logging.ERROR)


@dataclass(frozen=True)
class StudyKey:
    """What makes trials of one study comparable: a later run that differs must use another study."""

    model: str
    objective: str
    data: str  # the data fingerprint
    fixed: str = "{}"  # JSON: the training settings (and max-length) the search does not range over, as trained

    def as_attrs(self) -> dict:
        return {"key.model": self.model, "key.objective": self.objective, "key.data": self.data,
                "key.fixed": self.fixed}


def _fixed_differences(before: str, now: str) -> list[str]:
    import json

    old, new = json.loads(before or "{}"), json.loads(now or "{}")
    return [f"{name}: {old.get(name, 'searched')} in the study, {new.get(name, 'searched')} now"
            for name in sorted(set(old) | set(new)) if old.get(name, "searched") != new.get(name, "searched")]


def _space_conflicts(study, space) -> list[str]:
    """Settings whose new range Optuna cannot mix with the trials the study has (another list of choices, a log
    scale switched, a list where there was a range): a trial would fail on its first suggestion."""
    import optuna

    from steps.training.search_space import distribution

    earlier = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            earlier.setdefault(name, dist)
    conflicts = []
    for d in space:
        if d.name in earlier:
            try:
                optuna.distributions.check_distribution_compatibility(earlier[d.name], distribution(d))
            except ValueError:
                conflicts.append(f"{d.name}: now {d.describe().split(': ', 1)[1]}, which its trials' "
                                 f"{type(earlier[d.name]).__name__} cannot be mixed with")
    return conflicts


def open_study(url: str, name: str, key: StudyKey, direction: str, space_json: str, space=()):
    """Create the study, or load it and check that it searched the same model, objective, data and fixed settings,
    and that the new space's ranges can be mixed with its trials' (a narrower range can; other choices cannot)."""
    import optuna

    quiet_optuna()
    study = optuna.create_study(storage=storage(url), study_name=name, direction=direction, load_if_exists=True)
    attrs = study.user_attrs
    if not attrs.get("key.model"):
        for attr, value in {**key.as_attrs(), "space": space_json}.items():
            study.set_user_attr(attr, value)
        return study
    differ = [f"{what}: {attrs.get(attr)} in the study, {value} now" for attr, value in key.as_attrs().items()
              for what in [attr.split(".", 1)[1]] if attr != "key.fixed" and attrs.get(attr) != value]
    differ += _fixed_differences(attrs.get("key.fixed", "{}"), key.fixed)
    if study.direction.name.lower() != direction:
        differ.append(f"direction: {study.direction.name.lower()} in the study, {direction} now")
    if differ:
        raise ReviewflowError(f"--study {name} was searched with other settings ({'; '.join(differ)}): its trials "
                              "would not compare with new ones; give another --study name")
    conflicts = _space_conflicts(study, space)
    if conflicts:
        raise ReviewflowError(f"--study {name}: the space cannot continue it ({'; '.join(conflicts)}); keep each "
                              "setting's kind, choices and scale (a range may narrow or widen), or give another "
                              "--study name")
    return study


def load_study(url: str, name: str, seed: int | None = None, budget: int = 0):
    """The study, with this process's sampler and pruner (Optuna keeps neither in the database). The sampler: TPE,
    seeded per worker and per trials already in the study (so two workers, or a continued study, do not propose
    the same recipes), with a constant liar so parallel workers spread out. The pruner: median, per epoch."""
    import optuna

    quiet_optuna()
    if seed is None:
        return optuna.load_study(study_name=name, storage=storage(url))
    study = optuna.load_study(study_name=name, storage=storage(url))
    sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)),
                                         n_startup_trials=max(2, min(10, budget // 3)), constant_liar=True)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=0)
    return optuna.load_study(study_name=name, storage=storage(url), sampler=sampler, pruner=pruner)


# --- where a study stands -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    complete: int
    pruned: int
    failed: int
    running: int

    @property
    def done(self) -> int:
        return self.complete + self.pruned


def ran(trials) -> list:
    """The trials that ran: not those a worker created after the budget was spent (see Worker.surplus)."""
    return [t for t in trials if not t.user_attrs.get(SURPLUS_ATTR)]


def counts(study) -> Counts:
    from optuna.trial import TrialState

    trials = ran(study.get_trials(deepcopy=False))
    n = lambda state: sum(t.state == state for t in trials)  # noqa: E731
    return Counts(n(TrialState.COMPLETE), n(TrialState.PRUNED), n(TrialState.FAIL), n(TrialState.RUNNING))


def best_trial(study):
    """The best complete trial, or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = max if study.direction.name == "MAXIMIZE" else min
    return pick(complete, key=lambda t: (t.value, -t.number) if pick is max else (t.value, t.number))


def progress_line(study, budget: int, figure: str) -> str:
    c, best = counts(study), best_trial(study)
    return (f"study {study.study_name}: {c.done}/{budget} trials done ({c.pruned} pruned, {c.failed} failed), "
            f"{c.running} running; best so far "
            + (f"{figure} {best.value:.4f} (trial {best.number})" if best else "none yet"))


# --- trials whose worker died -------------------------------------------------------------------------------
def process_alive(pid: int, started: str | None) -> bool:
    from steps.runtime.threads import _started

    now = _started(pid)
    return now is not None and (started is None or now == started)


def _sweep_lock(study):
    """Serializes the sweep among workers of a SQLite study (one machine: SQLite takes no row locks); PostgreSQL
    locks the trial's row itself (Optuna updates it SELECT ... FOR UPDATE)."""
    import contextlib

    url = str(getattr(study._storage, "url", ""))
    if not url.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(url[len("sqlite:///"):] + ".sweep.lock", timeout=120)


def fail_dead_trials(study, mlflow_client=None) -> list[int]:
    """Mark failed the RUNNING trials whose worker is gone: on this machine when its pid is gone (at once), elsewhere
    when its heartbeat is older than the grace period. Each recipe is queued again once; their MLflow runs are
    marked FAILED. Returns their numbers."""
    import optuna
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    with _sweep_lock(study):
        running = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)  # heartbeats (workers elsewhere); queues each recipe once
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            if attrs.get(HOST_ATTR) != host or PID_ATTR not in attrs:
                continue
            if process_alive(int(attrs[PID_ATTR]), attrs.get(STARTED_ATTR)):
                continue
            try:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker got there first
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)  # as the heartbeat's sweep does
            retry(study, study._storage.get_trial(trial._trial_id))
        now = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        failed = sorted(n for n in running if now.get(n) == TrialState.FAIL)
    for number in failed:
        run_id = running[number].user_attrs.get(RUN_ATTR)
        if mlflow_client is not None and run_id:
            try:
                mlflow_client.set_tag(run_id, "trial_state", "failed")
                mlflow_client.set_tag(run_id, "outcome", "its worker stopped")
                mlflow_client.set_terminated(run_id, "FAILED")
            except Exception as err:  # noqa: BLE001 - the study is what counts; the run is a record of it
                print(f"could not mark the MLflow run of trial {number} FAILED: {err}", flush=True)
    if failed:
        print(f"trial(s) {', '.join(map(str, failed))}: their worker stopped; marked failed (not counted), each "
              "recipe queued once more", flush=True)
    return failed


def running_elsewhere(study) -> list[int]:
    """RUNNING trials owned by workers on other machines (whose liveness only their heartbeat tells)."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get(HOST_ATTR) != host]


def own(trial) -> None:
    """Record which process runs the trial, so a worker on this machine can tell when it died."""
    from steps.runtime.threads import _started

    trial.set_user_attr(HOST_ATTR, socket.gethostname())
    trial.set_user_attr(PID_ATTR, os.getpid())
    trial.set_user_attr(STARTED_ATTR, _started(os.getpid()))
