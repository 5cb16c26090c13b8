"""A user's mistake ends a run with its message as the last line, no traceback and no "Internal error", and a
non-zero exit; a real bug keeps its traceback. Real runs of `python flows/review_flow.py run` (flowkit/launch.py)."""
import os
import subprocess
import sys

from flowkit.launch import forget_user_error, launches_a_run, record_user_error, recorded_user_errors, task_of
from tests.fixtures import review_frame
from tests.flow_runs import FLOWS, flow_env


def launch(workdir, *args, **env):
    workdir.mkdir(parents=True, exist_ok=True)
    # an explicit model: the default, auto, would pick (and on an offline GPU machine fail to fetch) MPNet there
    done = subprocess.run([sys.executable, str(FLOWS / "review_flow.py"), "run", "--model", "minilm", *args],
                          cwd=workdir,
                          env=flow_env(workdir, **env), capture_output=True, text=True, timeout=300)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return done.returncode, lines


def test_a_missing_data_file_stops_in_start_with_only_the_message_last(tmp_path):
    missing = tmp_path / "nosuchfile.csv"
    code, lines = launch(tmp_path / "work", "--data", str(missing))
    assert code != 0
    assert lines[-1] == f"--data {missing}: no such file or directory"
    text = "\n".join(lines)
    assert "Traceback" not in text and "Internal error" not in text
    assert "/start/" in text and "/ingest/" not in text  # checked before any work


def test_bad_data_found_by_a_retried_step_ends_with_its_message_once(tmp_path):
    data = tmp_path / "columns.csv"
    data.write_text("a,b\n1,2\n")
    code, lines = launch(tmp_path / "work", "--data", str(data))
    assert code != 0
    assert lines[-1].startswith(f"{data}: missing required column(s): no 'reviewText' column")
    assert sum(line.startswith(str(data)) for line in lines) == 1  # the step's own lines carry a prefix
    text = "\n".join(lines)
    assert "Traceback" not in text and "Internal error" not in text
    assert text.count("not run again, the previous attempt stopped on bad input") == 2  # ingest's @retry


def test_a_bug_keeps_its_traceback(tmp_path):
    data = tmp_path / "reviews.csv"
    review_frame(20).to_csv(data, index=False)
    code, lines = launch(tmp_path / "work", "--data", str(data), REVIEWFLOW_FAIL_AT="start")
    text = "\n".join(lines)
    assert code != 0 and "Traceback" in text and "InjectedFault" in text
    assert lines[-1].strip() == "Step start (task-id 1) failed."  # Metaflow's own last line: nothing recorded


def test_which_process_launches_a_run():
    assert launches_a_run(["flow.py", "run", "--data", "x"])
    assert launches_a_run(["flow.py", "--datastore=s3", "resume", "--origin-run-id", "1"])
    assert not launches_a_run(["flow.py", "--quiet", "step", "ingest", "--run-id", "1"])
    assert not launches_a_run(["flow.py", "show"])


def test_recorded_messages_come_back_once_each_without_the_retry_note(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEWFLOW_USER_ERRORS", str(tmp_path))
    ingest = ["flow.py", "--quiet", "step", "ingest", "--run-id", "7", "--task-id", "2", "--retry-count", "0"]
    other = ["flow.py", "step", "fold", "--run-id", "7", "--task-id", "5"]
    record_user_error("--data x: no such file", ingest)
    record_user_error("--data x: no such file\n(attempt 2: not run again, the previous attempt stopped ...)", ingest)
    record_user_error("a message\nover two lines", other)
    assert recorded_user_errors(str(tmp_path)) == ["--data x: no such file", "a message\nover two lines"]
    forget_user_error(other)  # a later attempt of that task started: its earlier message no longer holds
    assert recorded_user_errors(str(tmp_path)) == ["--data x: no such file"]
    assert task_of(ingest) == "7-ingest-2"
    assert recorded_user_errors(str(tmp_path / "none")) == []


def test_folders_of_launchers_that_died_are_swept(tmp_path):
    """A run SIGKILLed (or a machine that went down) cannot remove its user-error folder; the next launch removes
    the folders whose launching process is gone, and leaves those of live processes and anything else."""
    from flowkit.launch import USER_ERRORS_PREFIX, hold_user_error_folder, sweep_user_error_folders

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{USER_ERRORS_PREFIX}{gone.pid}-ab_12x"
    alive = tmp_path / f"{USER_ERRORS_PREFIX}{os.getpid()}-cd34yz"
    held = tmp_path / f"{USER_ERRORS_PREFIX}{gone.pid}-held"  # its pid looks dead (another pid namespace)...
    odd = [tmp_path / f"{USER_ERRORS_PREFIX}notapid", tmp_path / f"{USER_ERRORS_PREFIX}{'9' * 30}-x"]
    for folder in (dead, alive, held, *odd):
        folder.mkdir()
    (dead / "7-ingest-2").write_text("--data x: no such file")
    lock = hold_user_error_folder(str(held))  # ... but its launcher holds the lock
    assert recorded_user_errors(str(held)) == []  # the lock file is no message
    try:
        assert sweep_user_error_folders(str(tmp_path)) == [str(dead)]
        assert not dead.exists() and alive.exists() and held.exists() and all(f.exists() for f in odd)
    finally:
        lock.close()
    assert sweep_user_error_folders(str(tmp_path)) == [str(held)]  # the lock dropped: its process is gone


def test_a_launch_names_its_folder_by_its_pid_and_holds_it_until_it_ends(tmp_path, monkeypatch):
    """The folder main() makes is one the sweep recognises, locked while the run goes on, removed at its end."""
    import flowkit.launch as launch

    seen = {}

    class Flow:
        def __init__(self):
            folder = os.environ["REVIEWFLOW_USER_ERRORS"]
            seen["folder"] = folder
            seen["swept while running"] = launch.sweep_user_error_folders(str(tmp_path))
            seen["exists"] = os.path.isdir(folder)

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["flow.py", "run"])
    monkeypatch.setattr(launch, "prepare_environment", lambda: None)  # no datastore, no environment of its own
    monkeypatch.setenv("REVIEWFLOW_USER_ERRORS", "")  # main() sets it: restored after the test
    monkeypatch.setattr("flowkit.metaflow_internals.print_user_errors_plainly", lambda *a, **k: None)
    launch.main(Flow)
    assert os.path.basename(seen["folder"]).startswith(f"{launch.USER_ERRORS_PREFIX}{os.getpid()}-")
    assert seen["exists"] and seen["swept while running"] == []
    assert not os.path.exists(seen["folder"])
