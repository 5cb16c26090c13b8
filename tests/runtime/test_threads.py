"""Core leases (steps/runtime/threads.py): each step process's share of the cores follows the tasks that hold
leases on the machine, an enforced limit (CPU quota, affinity) caps it, an explicit count wins, leases of dead
processes do not count. Other processes are real subprocesses holding real leases."""
import os
import subprocess
import sys

import pytest

from steps.runtime import threads
from steps.runtime.errors import ReviewflowError
from tests.flow_runs import ROOT

HOLDER = ("import sys, time; from steps.runtime import threads; threads.take_lease(); print('held', flush=True); "
          "time.sleep(60)")


@pytest.fixture
def leases(tmp_path, monkeypatch):
    import torch

    folder = tmp_path / "leases"
    monkeypatch.setenv("REVIEWFLOW_CORE_LEASES", str(folder))
    for name in ("REVIEWFLOW_THREADS", "OMP_NUM_THREADS", "REVIEWFLOW_SHARED_CORES", "TOKENIZERS_PARALLELISM",
                 *threads.POOL_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_lease", None)
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setattr(threads, "_written", None)
    before = torch.get_num_threads()
    holders = []

    def hold():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        holders.append(process)
        return process

    yield folder, hold
    threads.release_lease()
    for process in holders:
        process.kill()
        process.wait()
    torch.set_num_threads(before)


def test_alone_a_task_gets_every_usable_core(leases):
    import torch

    assert threads.take_lease() == threads.usable_cores() == torch.get_num_threads()
    assert threads.live_leases() == [os.getpid()] and not threads.shared()
    threads.release_lease()
    assert threads.live_leases() == []


@pytest.mark.skipif(threads.usable_cores() < 2, reason="sharing needs at least 2 usable cores")
def test_a_second_task_halves_the_share_and_its_end_gives_it_back(leases):
    import torch

    folder, hold = leases
    cores = threads.usable_cores()
    assert threads.take_lease() == cores
    other = hold()
    assert threads.shared() and threads.rebalance() == max(1, cores // 2) == torch.get_num_threads()
    other.kill()
    other.wait()
    assert threads.rebalance() == cores == torch.get_num_threads()
    assert sorted(p.name for p in folder.iterdir()) == [str(os.getpid())]  # the dead task's lease was removed


@pytest.mark.skipif(threads.usable_cores() < 2, reason="sharing needs at least 2 usable cores")
def test_siblings_starting_together_get_their_share_before_their_leases_appear(leases):
    """A shard of a local foreach knows its siblings: its pools (an onnxruntime session cannot be resized later)
    are sized for them at once, and it does not spin, even while it is the only lease so far."""
    import torch

    cores = threads.usable_cores()
    with threads.lease(siblings=2) as share:
        assert share == max(1, cores // 2) == torch.get_num_threads() and threads.live_leases() == [os.getpid()]
        assert threads.shared() and os.environ["REVIEWFLOW_SHARED_CORES"] == "1"
    assert threads.take_lease() == cores and not threads.shared()  # forgotten with the lease


def test_a_lease_whose_pid_now_belongs_to_another_process_does_not_count(leases):
    folder, _ = leases
    threads.take_lease()
    (folder / str(os.getppid())).write_text("1")  # a live pid, started at another time than the lease says
    assert threads.live_leases() == [os.getpid()] and not (folder / str(os.getppid())).exists()


def test_an_explicit_count_wins_and_the_modules_own_setting_is_not_mistaken_for_one(leases, monkeypatch):
    _, hold = leases
    monkeypatch.setenv("REVIEWFLOW_THREADS", "3")
    hold()
    assert threads.take_lease() == 3
    monkeypatch.delenv("REVIEWFLOW_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.rebalance() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads.rebalance()  # not explicit now: the module writes OMP_NUM_THREADS itself ...
    assert os.environ["OMP_NUM_THREADS"] == str(threads.share())
    assert threads.explicit_threads() is None  # ... and does not read its own value back as the user's


def test_a_count_that_is_not_a_number_names_the_variable(leases, monkeypatch):
    monkeypatch.setenv("REVIEWFLOW_THREADS", "many")
    with pytest.raises(ReviewflowError, match="REVIEWFLOW_THREADS='many': a number of threads is a whole number"):
        threads.share()


def test_an_enforced_cpu_quota_caps_the_cores(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # what @resources(cpu=1.5) becomes on Kubernetes
    assert threads.cgroup_cpu_quota(str(v2)) == 2
    (v2 / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(str(v2)) is None
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpu_quota(str(tmp_path / "v1")) == 1
    assert threads.cgroup_cpu_quota(str(tmp_path / "none")) is None


def test_a_cpu_affinity_caps_the_cores():
    code = "import os; os.sched_setaffinity(0, {0}); from steps.runtime import threads; print(threads.usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "1", out.stderr


def spinning(options) -> str | None:
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime's default, which spins
        return None


@pytest.mark.skipif(threads.usable_cores() < 2, reason="sharing needs at least 2 usable cores")
def test_the_served_models_onnx_sessions_take_the_share_and_do_not_spin_beside_another_task(leases):
    """The served model imports nothing of this project: it reads what `apply` leaves in the environment."""
    import onnxruntime as ort

    from steps.serving.classifier_model import _size_threads

    _, hold = leases
    threads.take_lease()
    alone = ort.SessionOptions()
    _size_threads(alone)
    assert alone.intra_op_num_threads == threads.usable_cores() and spinning(alone) is None
    hold()
    threads.rebalance()
    beside = ort.SessionOptions()
    _size_threads(beside)
    assert beside.intra_op_num_threads == max(1, threads.usable_cores() // 2) and spinning(beside) == "0"


def test_an_openmp_list_and_an_unwritable_lease_folder_are_handled(leases, monkeypatch, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    assert threads.share() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert threads.take_lease(blocked / "leases") == threads.usable_cores()  # no lease, still sized
    assert threads._lease is None
