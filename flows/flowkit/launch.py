"""Start a flow: the process environment that Metaflow and the libraries need, set when a flow runs, not on import."""
from __future__ import annotations

import getpass
import os


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in some containers
        return ""


def prepare_environment() -> None:
    """Set what every process of a flow run needs; the step processes Metaflow starts inherit it."""
    from flowkit.metaflow_internals import ensure_local_datastore
    from steps.runtime.progress import mark_launch_from_terminal

    # Metaflow refuses to run without a user name, and does not accept "root" as one; containers and CI often
    # run as root with no USER set.
    if not any(os.environ.get(v) not in (None, "", "root") for v in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
        name = _login_name()
        os.environ["USERNAME"] = name if name not in ("", "root") else "reviewflow"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine unless asked
    # Library progress bars ("Loading weights", "Writing model shards", artifact downloads) redraw with \r, which
    # a step's piped, line-prefixed log shows as one garbled line per redraw; reviewflow's own progress replaces
    # them.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    ensure_local_datastore()  # two flows started at once in a fresh directory would race to create it
    mark_launch_from_terminal()  # launched from a terminal: the steps print progress lines (steps/runtime/progress.py)


def with_run_defaults(argv: list[str], defaults: dict) -> list[str]:
    """`argv` with run options added after `run`/`resume` where the command line does not give them itself
    (e.g. {"--max-workers": "1"}: a flow that measures speed runs its tasks one at a time unless told otherwise)."""
    commands = [i for i, arg in enumerate(argv) if arg in ("run", "resume")]
    if not commands:
        return list(argv)
    at = commands[0] + 1
    added = [part for option, value in defaults.items()
             if not any(arg == option or arg.startswith(option + "=") for arg in argv) for part in (option, value)]
    return [*argv[:at], *added, *argv[at:]]


def main(flow_class, run_defaults: dict | None = None) -> None:
    """`if __name__ == "__main__": main(ReviewFlow)`: prepare the environment, then hand over to Metaflow."""
    import sys

    prepare_environment()
    if run_defaults:
        sys.argv = with_run_defaults(sys.argv, run_defaults)
    flow_class()
