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

from metaflow import FlowMutator, current  # noqa: E402

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

    with tracking.step_run(flow.tracking_uri, flow.mlflow_run_id, step_name, current.pathspec,
                           current.retry_count) as run:
        yield run
