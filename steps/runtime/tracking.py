"""Tracking: one MLflow parent run per flow run, one nested run per step, metrics logged in batches.

The embedded default is a SQLite database, `mlflow.db`, in the directory the flow is started from
(`MLFLOW_TRACKING_URI` overrides it, e.g. an `mlflow server`). The URI is resolved once, when the flow
starts, and every step (also a resumed one, from another directory) logs to that same place.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from schemas import LABEL_COLUMN

EXPERIMENT = "reviewflow"
METRIC_BATCH = 200  # MLflow's log_batch accepts up to 1000 metrics per call
CHAMPION = "champion"  # the registry aliases: what serves, and the newest candidate (steps/lifecycle/promotion.py)
CHALLENGER = "challenger"


def resolve_tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


_READY_STORES: set[str] = set()  # stores this process has opened (and, if new, migrated) already
STORE_INIT_TIMEOUT = 600  # seconds to wait for another process's migration of a fresh SQLite store


def client(uri: str):
    """An MlflowClient for `uri` (which also becomes this process's tracking and registry URI).

    The first process that opens a SQLite store creates and migrates its schema; two doing it at once corrupt
    it (`duplicate column name`, `_alembic_tmp_tags already exists`). So the first open in each process holds a
    file lock beside the database (`mlflow.db.lock`) while it opens the tracking and the registry store; a
    process that waited finds the schema complete and migrates nothing.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # runs and registered models live in the same store, always
    if uri in _READY_STORES:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    with _store_init_lock(uri), _explained_refusal(uri):
        mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # opens (if new, migrates) the tracking store
        mlflow_client.search_registered_models(max_results=1)  # and the registry store
    _READY_STORES.add(uri)
    return mlflow_client


@contextmanager
def _explained_refusal(uri: str):
    """An MLflow server that refuses us (401/403) becomes one line naming the settings to fix (never their values)."""
    from mlflow.exceptions import MlflowException

    from steps.runtime.errors import ReviewflowError

    try:
        yield
    except MlflowException as err:
        text = str(err)
        if "401" in text or err.error_code == "UNAUTHENTICATED":
            given = "are set but were refused" if os.environ.get("MLFLOW_TRACKING_USERNAME") else "are not set"
            raise ReviewflowError(
                f"the MLflow server at {uri} requires a login (HTTP 401): MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD {given}; set them (for the local team setup: source "
                "infra/local/.state/services.env)") from None
        if "403" in text or err.error_code == "PERMISSION_DENIED":
            user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
            raise ReviewflowError(
                f"the MLflow server at {uri} refused MLFLOW_TRACKING_USERNAME={user!r} (HTTP 403): ask its admin "
                "for permission on the experiment and the registered model") from None
        raise


def _store_init_lock(uri: str):
    """A file lock beside a SQLite database; nothing for other stores (a server migrates its own)."""
    from contextlib import nullcontext

    if not uri.startswith("sqlite:///"):
        return nullcontext()
    from filelock import FileLock

    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock", timeout=STORE_INIT_TIMEOUT)


def _experiment_id(mlflow_client, name: str) -> str:
    """The experiment's id, creating it if needed.

    With the embedded SQLite store, MLFLOW_DEFAULT_ARTIFACT_ROOT (the variable `mlflow server` reads too)
    decides where a new experiment keeps its artifacts, e.g. s3://bucket/mlflow; an mlflow server decides
    that itself.
    """
    from mlflow.exceptions import MlflowException

    root = os.environ.get("MLFLOW_DEFAULT_ARTIFACT_ROOT")
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{root.rstrip('/')}/{name}" if root else None
        try:
            return mlflow_client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another process
            experiment = mlflow_client.get_experiment_by_name(name)
    if root and not experiment.artifact_location.startswith(root.rstrip("/")):
        from steps.runtime.errors import ReviewflowError

        raise ReviewflowError(
            f"MLflow experiment '{name}' already keeps its artifacts in {experiment.artifact_location}, but "
            f"MLFLOW_DEFAULT_ARTIFACT_ROOT is {root}. Use another experiment (MLFLOW_EXPERIMENT_NAME) or another "
            "tracking store for the new artifact root."
        )
    return experiment.experiment_id


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT


def start_flow_run(uri: str, flow_name: str, run_id: str, params: dict, tags: dict | None = None,
                   experiment: str | None = None) -> str:
    """Create the parent MLflow run of a flow run (experiment: MLFLOW_EXPERIMENT_NAME or 'reviewflow')."""
    experiment = experiment or experiment_name()
    mlflow_client = client(uri)
    run = mlflow_client.create_run(
        _experiment_id(mlflow_client, experiment),
        run_name=f"{flow_name}/{run_id}",
        tags={
            "metaflow_flow": flow_name,
            "metaflow_run": f"{flow_name}/{run_id}",
            "mlflow.source.name": f"{flow_name} (Metaflow)",
            "mlflow.user": os.environ.get("USERNAME") or os.environ.get("USER") or "unknown",
            **(tags or {}),
        },
    )
    log_params(mlflow_client, run.info.run_id, params)
    return run.info.run_id


def finish_flow_run(uri: str, parent_run_id: str, status: str = "FINISHED", outcome: str | None = None,
                    metaflow_run: str | None = None) -> None:
    """Close the parent run; `metaflow_run` (Flow/run id), when it is a resume, is listed in metaflow_resumed_in."""
    mlflow_client = client(uri)
    if metaflow_run:
        link_resumed_run(mlflow_client, mlflow_client.get_run(parent_run_id), metaflow_run)
    if outcome:
        mlflow_client.set_tag(parent_run_id, "outcome", outcome)
    mlflow_client.set_terminated(parent_run_id, status)


def log_params(mlflow_client, run_id: str, params: dict) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start:start + 100])


class StepRun:
    """Logging handle for one step's nested MLflow run; metrics are buffered and sent in batches."""

    def __init__(self, mlflow_client, run_id: str):
        self.client = mlflow_client
        self.run_id = run_id
        self._pending = []

    def params(self, params: dict) -> None:
        log_params(self.client, self.run_id, params)

    def metrics(self, metrics: dict, step: int = 0) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self._pending.append(Metric(key, float(value), now, step))
        if len(self._pending) >= METRIC_BATCH:
            self.flush()

    def flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:METRIC_BATCH], self._pending[METRIC_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)

    def tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def artifact(self, path: str | os.PathLike, subdir: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), subdir)

    def json(self, obj, name: str) -> None:
        self.text(json.dumps(obj, indent=2, default=str), name)

    def text(self, text: str, name: str) -> None:
        self._file(name, lambda target: target.write_text(text))

    def image(self, png: bytes, name: str) -> None:
        """PNG bytes as the artifact `name` (e.g. plots/roc_curve.png)."""
        self._file(name, lambda target: target.write_bytes(png))

    def frame(self, frame, name: str) -> None:
        self._file(name, lambda target: frame.to_csv(target, index=False))

    def _file(self, name: str, write) -> None:
        """Log the artifact `name` (a path such as plots/roc.png: folder and file name) that `write(path)` makes."""
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / Path(name).name
            write(target)
            subdir = str(Path(name).parent) if str(Path(name).parent) != "." else None
            self.artifact(target, subdir)


RESUMED_IN = "metaflow_resumed_in"
CLOSED_REASON = "reviewflow.closed_reason"


def _metaflow_run(pathspec: str) -> str:
    """ReviewFlow/12 of ReviewFlow/12/train/34."""
    return "/".join(pathspec.split("/")[:2])


def link_resumed_run(mlflow_client, parent, pathspec: str) -> None:
    """A `resume` logs into the parent run of the run it resumes (its start step, which made the parent, is
    cloned); the parent lists every such later Metaflow run in `metaflow_resumed_in`, so the MLflow UI shows one
    history and each step run's `metaflow_pathspec` says which Metaflow run it belongs to."""
    origin, here = parent.data.tags.get("metaflow_run"), _metaflow_run(pathspec)
    if origin is None or origin == here:
        return
    resumed = [r for r in parent.data.tags.get(RESUMED_IN, "").split(",") if r]
    if here not in resumed:
        mlflow_client.set_tag(parent.info.run_id, RESUMED_IN, ",".join(resumed + [here]))
        mlflow_client.set_tag(parent.info.run_id, "resumed", "true")


def close_orphaned_step_runs(mlflow_client, parent, pathspec: str) -> list[str]:
    """Mark KILLED the step runs a dead process left RUNNING under `parent`, and say why.

    A step whose process was killed (kill -9, out of memory, a lost machine) cannot mark its own MLflow run.
    When a step starts, a RUNNING step run of the same flow lineage is such an orphan if it belongs to another
    Metaflow run (the run being resumed) or to this very task (an earlier attempt that @retry replaces); runs
    of other tasks of this Metaflow run are left alone, they may be running in parallel. Returns their ids.
    """
    here = _metaflow_run(pathspec)
    running = mlflow_client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and attributes.status = 'RUNNING'")
    closed = []
    for orphan in running:
        theirs = orphan.data.tags.get("metaflow_pathspec", "")
        if theirs != pathspec and _metaflow_run(theirs) == here:
            continue
        mlflow_client.set_tag(orphan.info.run_id, CLOSED_REASON,
                              f"its process died before the step finished (killed, out of memory or machine lost); "
                              f"closed when {pathspec} started")
        mlflow_client.set_terminated(orphan.info.run_id, "KILLED")
        print(f"MLflow: step run {orphan.info.run_name} ({theirs}) was left RUNNING by a process that died; "
              f"marked KILLED", flush=True)
        closed.append(orphan.info.run_id)
    return closed


@contextmanager
def step_run(uri: str, parent_run_id: str, step_name: str, pathspec: str, attempt: int = 0):
    """A nested MLflow run for one Metaflow step, marked FAILED (with its parent) if the step raises.

    The fluent API's active run is set to it, so `mlflow.*` calls inside the block log there too.
    """
    import mlflow

    mlflow_client = client(uri)
    parent = mlflow_client.get_run(parent_run_id)
    if parent.info.status != "RUNNING":
        # Resumed or retried: the parent was marked FAILED when a step crashed; the flow run is running again.
        mlflow_client.update_run(parent_run_id, status="RUNNING")
    link_resumed_run(mlflow_client, parent, pathspec)
    close_orphaned_step_runs(mlflow_client, parent, pathspec)
    run = mlflow.start_run(
        experiment_id=parent.info.experiment_id,
        run_name=step_name,
        nested=True,
        parent_run_id=parent_run_id,
        tags={"metaflow_step": step_name, "metaflow_pathspec": pathspec, "metaflow_attempt": str(attempt)},
    )
    handle = StepRun(mlflow_client, run.info.run_id)
    try:
        yield handle
        handle.flush()
    except BaseException:
        try:
            handle.flush()
        finally:
            mlflow.end_run(status="FAILED")
            mlflow_client.set_terminated(parent_run_id, "FAILED")
        raise
    mlflow.end_run(status="FINISHED")


def log_dataset(mlflow_client, run_ids: list[str], frame, fingerprint: str, source: str, name: str = "reviews",
                context: str = "training") -> None:
    """Record the ingested data as an MLflow dataset input, its digest being our fingerprint, on each run."""
    import mlflow
    from mlflow.tracking.fluent import _create_dataset_input

    dataset = mlflow.data.from_pandas(frame, source=source, name=name, targets=LABEL_COLUMN, digest=fingerprint[:36])
    dataset_input = _create_dataset_input(dataset, context, {"fingerprint": fingerprint})
    for run_id in run_ids:
        mlflow_client.log_inputs(run_id, datasets=[dataset_input])


def alias_version(mlflow_client, name: str, alias: str) -> int | None:
    """The version of registered model `name` that holds `alias`, or None (no such alias or model)."""
    from mlflow.exceptions import MlflowException

    try:
        return int(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None
