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
    # OpenMP threads that wait spin only briefly, then sleep: beside another task, spinning threads take the cores
    # the other one needs (steps/runtime/threads.py sizes the pools). GNU OpenMP (PyTorch's wheels) spins 300,000
    # iterations by default; 10,000 trained as fast alone (114-118 against 106-114 samples/s), where sleeping at
    # once (OMP_WAIT_POLICY=PASSIVE) cost 20-35% (68-87). KMP_BLOCKTIME: the same for Intel's OpenMP, in ms.
    # Set here, before any library starts its pool.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    os.environ.setdefault("KMP_BLOCKTIME", "1")
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


USER_ERRORS = "REVIEWFLOW_USER_ERRORS"  # where a run's step processes leave the messages of their ReviewflowErrors


def launches_a_run(argv: list[str]) -> bool:
    """True for `flow.py [options] run|resume ...`, the process that starts the step processes (`... step NAME`)."""
    command = next((arg for arg in argv[1:] if arg in ("run", "resume", "step")), None)
    return command in ("run", "resume")


def record_user_error(message: str) -> None:
    """In a step process: leave `message` for the process that launched the run (see `main`)."""
    path = os.environ.get(USER_ERRORS)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(message.replace("\0", " ") + "\0")


def recorded_user_errors(path: str) -> list[str]:
    """The messages the run's steps left, each once, in order, without a retried attempt's "not run again" note."""
    from flowkit.step_runs import NOT_RUN_AGAIN

    try:
        with open(path, encoding="utf-8") as source:
            messages = [m.split(NOT_RUN_AGAIN)[0].rstrip() for m in source.read().split("\0") if m.strip()]
    except OSError:
        return []
    return list(dict.fromkeys(messages))


def main(flow_class, run_defaults: dict | None = None) -> None:
    """`if __name__ == "__main__": main(ReviewFlow)`: prepare the environment, then hand over to Metaflow.

    A run that a user's mistake stops (a ReviewflowError: bad data, option, path, model, credentials) ends with
    that message as its last line and a non-zero exit, with no traceback; any other failure keeps its traceback.
    The step processes print the message in place of Metaflow's "Internal error" and leave it in a file that the
    launching process prints after Metaflow's own failure lines.
    """
    import sys
    import tempfile

    from flowkit.metaflow_internals import print_user_errors_plainly

    prepare_environment()
    if run_defaults:
        sys.argv = with_run_defaults(sys.argv, run_defaults)
    if not launches_a_run(sys.argv):
        print_user_errors_plainly(flow_class, record=record_user_error)
        flow_class()
        return
    print_user_errors_plainly(flow_class)  # an error in this process is printed last by Metaflow itself
    handle, path = tempfile.mkstemp(prefix="reviewflow-user-errors-")
    os.close(handle)
    os.environ[USER_ERRORS] = path  # a run launched from inside a step gets its own file
    try:
        flow_class()
    except SystemExit as stop:
        messages = recorded_user_errors(path) if stop.code not in (0, None) else []
        if messages:
            sys.stdout.flush()
            print("\n".join(messages), file=sys.stderr, flush=True)
        raise
    finally:
        os.unlink(path)
