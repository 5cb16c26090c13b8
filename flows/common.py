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

    try:
        with tracking.step_run(flow.tracking_uri, flow.mlflow_run_id, step_name, current.pathspec,
                               current.retry_count) as run:
            fault_point()  # inside the step's MLflow run, so an injected failure marks it FAILED like a real one
            yield run
    except ReviewflowError:
        raise  # bad data or settings: the message says what to fix, and a fixed input needs a new `run`
    except Exception:
        print(resume_hint(), flush=True)
        raise


def resume_hint() -> str:
    """How to continue this run after a crash. Metaflow's plain `resume` takes the latest run started with
    `run`, never a resume, so the hint names this run explicitly."""
    from steps.report import script

    flow_file = script(getattr(sys.modules["__main__"], "__file__", "flows/review_flow.py"))
    return (f"{current.pathspec} failed. Once the cause is fixed, continue this run (finished steps are reused, "
            f"training continues from its last epoch checkpoint):\n"
            f"    python {flow_file} resume --origin-run-id {current.run_id}")


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

    storage = flow._datastore._storage_impl  # the datastore this task really writes to (--datastore, config)
    root = storage.datastore_root
    endpoint = None
    if flow._datastore.TYPE == "s3":
        from metaflow.metaflow_config import S3_ENDPOINT_URL

        endpoint = S3_ENDPOINT_URL
    own = checkpoint_location(root, current.flow_name, current.run_id, current.step_name)
    origin = current.origin_run_id
    resume_from = [checkpoint_location(root, current.flow_name, origin, current.step_name)] if origin else []
    return CheckpointStore(own, resume_from=resume_from, endpoint_url=endpoint)


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
