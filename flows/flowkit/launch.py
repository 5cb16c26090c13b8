"""Start a flow: the process environment that Metaflow and the libraries need, set when a flow runs, not on import."""
from __future__ import annotations

import getpass
import os
from pathlib import Path


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


def task_of(argv: list[str]) -> str:
    """`<run id>-<step>-<task id>` of a step process's command line (`... step NAME --run-id R --task-id T ...`)."""
    def value(option: str) -> str:
        return argv[argv.index(option) + 1] if option in argv[:-1] else "?"

    step = argv[argv.index("step") + 1] if "step" in argv[:-1] else "?"
    return f"{value('--run-id')}-{step}-{value('--task-id')}"


def record_user_error(message: str, argv: list[str] | None = None) -> None:
    """In a step process: leave `message` for the process that launched the run (see `main`), one file per task:
    a later attempt of the same task replaces it (`forget_user_error`)."""
    import sys

    folder = os.environ.get(USER_ERRORS)
    if folder and os.path.isdir(folder):
        Path(folder, task_of(argv or sys.argv)).write_text(message, encoding="utf-8")


def forget_user_error(argv: list[str] | None = None) -> None:
    """At the start of a step process: an earlier attempt's message no longer says how this task ended."""
    import sys

    folder = os.environ.get(USER_ERRORS)
    if folder:
        Path(folder, task_of(argv or sys.argv)).unlink(missing_ok=True)


USER_ERRORS_PREFIX = "reviewflow-user-errors-"  # + the launching process's pid + "-" + a random suffix
HELD = ".held"  # a file in the folder that its launching process keeps locked while it lives


def hold_user_error_folder(folder: str):
    """Lock `folder`'s HELD file for as long as the returned file stays open (the launching process's lifetime:
    the kernel drops the lock when the process dies, however it dies, in whatever pid namespace). None where the
    file system takes no locks: the sweep then goes by the pid alone."""
    import fcntl

    try:
        handle = open(os.path.join(folder, HELD), "w")  # noqa: SIM115 -- held open: closing it drops the lock
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def sweep_user_error_folders(parent: str | None = None) -> list[str]:
    """Remove the user-error folders that their launching process left behind (a run killed with SIGKILL, or a
    machine that went down, cannot remove its own); the paths removed. Left alone: another user's folders, a
    folder whose launching pid is alive, one whose HELD file is locked (its process lives, seen from another pid
    namespace sharing this temp directory), and names of another form."""
    import fcntl
    import re
    import shutil
    import tempfile

    parent = parent or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        match = re.fullmatch(re.escape(USER_ERRORS_PREFIX) + r"(\d{1,10})-\w+", name)
        path = os.path.join(parent, name)
        try:
            if not match or os.stat(path).st_uid != os.getuid() or _alive(int(match.group(1))):
                continue
            with open(os.path.join(path, HELD), "a") as held:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: still held
        except OSError:  # still held (BlockingIOError), gone already, or not ours to open
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # someone else's process, or no pid at all: leave it alone
        return True
    return True


def recorded_user_errors(folder: str) -> list[str]:
    """The messages of the tasks whose last attempt stopped on a user's mistake, oldest first, each once, without
    a retried attempt's "not run again" note."""
    from flowkit.step_runs import NOT_RUN_AGAIN

    try:
        files = sorted((f for f in Path(folder).iterdir() if f.name != HELD), key=lambda f: f.stat().st_mtime)
        messages = [f.read_text(encoding="utf-8").split(NOT_RUN_AGAIN)[0].rstrip() for f in files]
    except OSError:
        return []
    return list(dict.fromkeys(m for m in messages if m))


def main(flow_class, run_defaults: dict | None = None, refuse=None) -> None:
    """`if __name__ == "__main__": main(ReviewFlow)`: prepare the environment, then hand over to Metaflow.

    refuse(argv): a message when the command line must not start a run at all (checked before Metaflow stores
    anything: e.g. a password in an option), else None.
    A run that a user's mistake stops (a ReviewflowError: bad data, option, path, model, credentials) ends with
    that message as its last line and a non-zero exit, with no traceback; any other failure keeps its traceback.
    The step processes print the message in place of Metaflow's "Internal error" and leave it in a file that the
    launching process prints after Metaflow's own failure lines.
    """
    import sys
    import tempfile

    from flowkit.metaflow_internals import print_user_errors_plainly

    prepare_environment()
    problem = refuse(sys.argv) if refuse is not None and launches_a_run(sys.argv) else None
    if problem:  # before Metaflow stores the run's parameters
        print(problem, file=sys.stderr, flush=True)
        raise SystemExit(2)
    if run_defaults:
        sys.argv = with_run_defaults(sys.argv, run_defaults)
    if not launches_a_run(sys.argv):
        if "step" in sys.argv:
            forget_user_error()
        print_user_errors_plainly(flow_class, record=record_user_error)
        flow_class()
        return
    print_user_errors_plainly(flow_class)  # an error in this process is printed last by Metaflow itself
    sweep_user_error_folders()
    path = tempfile.mkdtemp(prefix=f"{USER_ERRORS_PREFIX}{os.getpid()}-")
    held = hold_user_error_folder(path)
    os.environ[USER_ERRORS] = path  # a run launched from inside a step gets its own folder
    try:
        flow_class()
    except SystemExit as stop:
        messages = recorded_user_errors(path) if stop.code not in (0, None) else []
        if messages:
            sys.stdout.flush()
            print("\n".join(messages), file=sys.stderr, flush=True)
        raise
    finally:
        import shutil

        if held is not None:
            held.close()
        shutil.rmtree(path, ignore_errors=True)
