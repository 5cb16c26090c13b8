"""What reviewflow's flows share: an importable library, a complete code package, MLflow step runs."""
import getpass
import os
import sys
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # flows/ is sys.path[0]; the library lives beside it
    sys.path.insert(0, str(PROJECT_ROOT))


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in some containers
        return ""


# Metaflow refuses to run without a user name, and does not accept "root" as one; containers and CI
# often run as root with no USER set.
if not any(os.environ.get(v) not in (None, "", "root") for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    _name = _login_name()
    os.environ["USERNAME"] = _name if _name not in ("", "root") else "reviewflow"
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine unless asked
# Library progress bars ("Loading weights", "Writing model shards", artifact downloads) redraw with \r, which a
# step's piped, line-prefixed log shows as one garbled line per redraw; reviewflow's own progress replaces them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from steps.progress import mark_launch_from_terminal  # noqa: E402

mark_launch_from_terminal()  # launched from a terminal: the steps print progress lines (steps/progress.py)

from metaflow import FlowMutator, current  # noqa: E402
from steps.errors import ReviewflowError  # noqa: E402

LIBRARY_PACKAGES = ("steps", "schemas")


class ship_library(FlowMutator):
    """Put steps/ and schemas/ into the flow's code package, so remote tasks (Argo, Kubernetes) import them."""

    def add_to_package(self):
        for package in LIBRARY_PACKAGES:
            root = PROJECT_ROOT / package
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    yield str(path), f"{package}/{path.relative_to(root).as_posix()}"


def flow_parameters(flow) -> dict:
    """The flow's Parameters as {option-name: value} (max_rows -> max-rows), for logging."""
    # Inside a task Metaflow turns Parameters into properties; _get_parameters still lists them.
    return {name.replace("_", "-"): getattr(flow, name) for name, _ in type(flow)._get_parameters()}


@contextmanager
def step_run(flow, step_name: str):
    """The nested MLflow run of the current step under the flow run's parent MLflow run."""
    from steps import tracking

    same_error = bad_input_of_previous_attempt()
    if same_error:  # @retry cannot be told which errors to retry; bad input gives the same error every time
        raise ReviewflowError(f"{same_error}\n(attempt {current.retry_count + 1}: not run again, the previous "
                              "attempt stopped on bad input or settings, which a retry cannot fix)")
    try:
        with tracking.step_run(flow.tracking_uri, flow.mlflow_run_id, step_name, current.pathspec,
                               current.retry_count) as run:
            fault_point()  # inside the step's MLflow run, so an injected failure marks it FAILED like a real one
            yield run
    except ReviewflowError:
        raise  # bad data or settings: the message says what to fix, and a fixed input needs a new `run`
    except Exception:
        print(resume_hint(flow), flush=True)
        raise


def bad_input_of_previous_attempt() -> str | None:
    """The message of the ReviewflowError (bad data or settings) that ended this step's previous attempt, if that
    is how it ended; None on a first attempt, after any other failure, or when it cannot be told."""
    if current.retry_count == 0:
        return None
    import importlib

    from metaflow import Task

    try:
        failure = Task(current.pathspec, attempt=current.retry_count - 1, _namespace_check=False).exception
        module, _, name = failure.type.rpartition(".")
        error_class = getattr(importlib.import_module(module), name)
        if isinstance(error_class, type) and issubclass(error_class, ReviewflowError):
            return failure.exception.split(NOT_RUN_AGAIN)[0].rstrip()  # the original message, once
    except Exception:  # no record of the attempt, or an exception class that cannot be imported here
        pass
    return None


NOT_RUN_AGAIN = "\n(attempt "


@contextmanager
def closing_flow_run(flow):
    """For `end`, which has no step run of its own: if it crashes, mark the flow's MLflow run FAILED (a resumed
    `end` sets it RUNNING again and finishes it) and say how to resume."""
    try:
        fault_point()
        yield
    except Exception:
        from steps import tracking

        try:
            tracking.finish_flow_run(flow.tracking_uri, flow.mlflow_run_id, status="FAILED")
        except Exception as err:  # the MLflow store may be what failed; the step's own error matters more
            print(f"could not mark the MLflow run {flow.mlflow_run_id} FAILED: {err}", flush=True)
        print(resume_hint(flow), flush=True)
        raise


def _retries(flow) -> int:
    """How many times @retry reruns the current step (0 without @retry)."""
    step_function = getattr(type(flow), current.step_name)
    return max([int(d.attributes.get("times", 0)) for d in getattr(step_function, "decorators", [])
                if d.name == "retry"] or [0])


def resume_hint(flow) -> str:
    """What to do after a crash: wait for @retry's next attempt, or, on the last attempt, resume this run.
    Metaflow's plain `resume` takes the latest run started with `run`, never a resume, so the hint names this
    run explicitly, with the datastore when it is not the default."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE

    from steps.report import script

    retries = _retries(flow)
    if current.retry_count < retries:
        return (f"{current.pathspec} failed on attempt {current.retry_count + 1} of {retries + 1}; "
                "@retry runs it again.")
    flow_file = script(getattr(sys.modules["__main__"], "__file__", "flows/review_flow.py"))
    datastore = flow._datastore.TYPE
    options = f" --datastore={datastore}" if datastore != DEFAULT_DATASTORE else ""
    return (f"{current.pathspec} failed. Once the cause is fixed, continue this run (finished steps are reused, "
            f"training continues from its last epoch checkpoint):\n"
            f"    python {flow_file}{options} resume --origin-run-id {current.run_id}")


def train_config(flow):
    """The training engine's settings from the flow's Parameters."""
    from steps.train import TrainConfig

    return TrainConfig(epochs=flow.epochs, batch_size=flow.batch_size, grad_accum=flow.grad_accum,
                       learning_rate=flow.learning_rate, warmup_ratio=flow.warmup_ratio, patience=flow.patience,
                       freeze_encoder=flow.freeze_encoder, class_weights=flow.class_weights,
                       compile=flow.compile, precision=flow.precision, seed=flow.seed)


CHECKPOINTS_FOLDER = "reviewflow-checkpoints"


def checkpoint_location(datastore_root: str, flow_name: str, run_id: str, step_name: str) -> str:
    """<datastore root>/reviewflow-checkpoints/<flow>/<run id>/<step>: beside Metaflow's own tree, not in it."""
    return "/".join([datastore_root.rstrip("/"), CHECKPOINTS_FOLDER, flow_name, str(run_id), step_name])


def datastore_root(flow) -> str:
    """Where this run's Metaflow artifacts are: the datastore root (a directory, or s3://...) it writes to."""
    return flow._datastore._storage_impl.datastore_root


def training_checkpoints(flow):
    """Where this task keeps its epoch checkpoints: in the flow's datastore (local directory or S3).

    Written under this run's id; read from this run first (a @retry of the step), then from the run this one
    resumes (`current.origin_run_id`), so a run killed mid-training and resumed goes on from its last epoch.
    """
    from steps.checkpoints import CheckpointStore

    root, endpoint = datastore_root(flow), _s3_endpoint(flow)
    own = checkpoint_location(root, current.flow_name, current.run_id, current.step_name)
    origin = current.origin_run_id
    resume_from = [checkpoint_location(root, current.flow_name, origin, current.step_name)] if origin else []
    return CheckpointStore(own, resume_from=resume_from, endpoint_url=endpoint)


def clear_training_checkpoints(flow, trained_by: str) -> None:
    """Delete the epoch checkpoint of the train task `trained_by` (its pathspec). Called by the step after
    train: by then Metaflow has stored the trained model as train's artifact, which it does only after the
    train step's body returns, so a failure to store it still finds the checkpoint. The checkpoint of a run
    that a resume started from is another run's and stays."""
    from steps.checkpoints import CheckpointStore

    flow_name, run_id, step_name = trained_by.split("/")[:3]
    location = checkpoint_location(datastore_root(flow), flow_name, run_id, step_name)
    try:
        CheckpointStore(location, endpoint_url=_s3_endpoint(flow)).clear()
    except Exception as err:  # clean-up only: the run goes on; the file can be deleted by hand
        print(f"could not delete the training checkpoint at {location}: {err}", flush=True)


def _s3_endpoint(flow) -> str | None:
    if flow._datastore.TYPE != "s3":
        return None
    from metaflow.metaflow_config import S3_ENDPOINT_URL

    return S3_ENDPOINT_URL


def fault_point() -> None:
    """Test hook (steps/faults.py): fails the current step when a test's REVIEWFLOW_FAIL_AT names it; else nothing."""
    from steps import faults

    faults.enter_step(current.step_name, current.retry_count)


def render_card_now(card_id: str) -> None:
    """Write the card `card_id` of the running task now, and wait until it is written.

    Metaflow renders a task's cards when the task succeeds; for a task that fails, the only card is whatever an
    earlier `current.card.refresh()` got written, and that refresh runs in a background process which Metaflow
    kills as the task ends. A step that explains a failure in its card calls this before it raises.
    (Metaflow has no public synchronous render; this is the call its own final render makes, pinned version.)
    """
    current.card[card_id]._card_proc("render_runtime", sync=True)
