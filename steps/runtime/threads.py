"""Thread pools sized to the cores a task may use, so that runs and tasks sharing a machine do not starve each
other.

Every torch/OpenMP process starts one busy thread per core. Two such processes on 2 cores ran 60x slower each,
not 2x: 4 threads that spin while they wait fight over 2 cores. So every step process (flows/flowkit/step_runs.py;
CompareFlow's folds, `lease()`) takes a *core lease* for as long as its step runs, and sizes its pools to its
share:

    share = usable cores // step processes holding a lease on this machine now (at least 1)

- usable cores: what this process may run on. Where `@resources(cpu=N)` is enforced (Kubernetes), the container's
  CPU quota (cgroup `cpu.max`); a CPU affinity (`taskset`, `docker --cpuset-cpus`); else every core.
- the leases: one file per step process in a folder shared by the machine's user (`core_lease_dir()`); a lease of
  a process that died is ignored and removed. Two ReviewFlows at once, a CompareFlow `foreach`, a scheduled run
  meeting a manual one: each process sees the others.
- an explicit count wins and is never changed: `REVIEWFLOW_THREADS`, else `OMP_NUM_THREADS` (as set by the user).
- waiting threads do not hold on to cores: OpenMP spins only briefly before it sleeps (`GOMP_SPINCOUNT`, set by
  the launcher before any library starts its pool), and onnxruntime sessions made while others hold leases do
  not spin (the served model reads `OMP_NUM_THREADS` and `REVIEWFLOW_SHARED_CORES`, which `apply` sets: it
  imports nothing of this project).

Long-running work re-reads its share (`rebalance()`: the training loop every few optimizer steps), so a run that
started alone gives up threads when a second one starts, and takes them back when it ends.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

EXPLICIT = ("REVIEWFLOW_THREADS", "OMP_NUM_THREADS")
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")

_lease: Path | None = None  # this process's lease file while it holds one
_applied: int | None = None  # the thread count last given to the pools
_written: str | None = None  # the OMP_NUM_THREADS this module wrote (so it is not mistaken for the user's)
_siblings = 1  # tasks of this step known to start side by side on this machine (lease(siblings=)), this one included


def core_lease_dir() -> Path:
    """Where this machine's step processes leave their leases: $REVIEWFLOW_CORE_LEASES, else a per-user folder
    in the temp directory (pods on Kubernetes each have their own, and their CPU quota instead)."""
    explicit = os.environ.get("REVIEWFLOW_CORE_LEASES")
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"reviewflow-core-leases-{os.getuid()}"


def usable_cores() -> int:
    """The cores this process may run on: the cgroup CPU quota where one is set, the CPU affinity, else all."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, quota)) if quota else max(1, cores)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole cores of the CPU quota of this process's cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded up;
    None without a quota."""
    import math

    try:
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path(root, "cpu", "cpu.cfs_quota_us").read_text())
        period = int(Path(root, "cpu", "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        return None


def explicit_threads() -> int | None:
    """The thread count the user set (REVIEWFLOW_THREADS, else OMP_NUM_THREADS), or None."""
    for name in EXPLICIT:
        value = os.environ.get(name, "").strip()
        if not value or (name == "OMP_NUM_THREADS" and value == _written):
            continue
        try:
            return max(1, int(value.split(",")[0]))  # OpenMP also takes a list per nesting level: "4,2"
        except ValueError:
            from steps.runtime.errors import ReviewflowError

            raise ReviewflowError(f"{name}={value!r}: a number of threads is a whole number, e.g. {name}=2") from None
    return None


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), to tell it from a later process that
    reuses its pid; None where /proc cannot say."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def live_leases(folder: Path | None = None) -> list[int]:
    """The pids holding a lease now; leases of processes that are gone are removed."""
    folder = folder or core_lease_dir()
    pids = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return pids
    for entry in entries:
        try:
            pid = int(entry.name)
            os.kill(pid, 0)
            started = _started(pid)
            if started is not None and entry.read_text().strip() not in ("", started):
                raise ProcessLookupError  # the pid now belongs to another process: the lease holder is gone
            pids.append(pid)
        except (ProcessLookupError, FileNotFoundError):
            entry.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):  # not a lease, or another user's live process
            continue
    return sorted(pids)


def share(folder: Path | None = None) -> int:
    """This process's share of the usable cores: explicit, else usable cores // (the other processes holding
    leases + this one), at least 1."""
    explicit = explicit_threads()
    if explicit:
        return explicit
    holders = set(live_leases(folder)) | {os.getpid()}  # with a lease or not, this process computes too
    return max(1, usable_cores() // max(len(holders), _siblings))


def take_lease(folder: Path | None = None, siblings: int = 1) -> int:
    """Register this process as using cores, size the pools to its share, and return the share. A lease that
    cannot be written (an unwritable temp folder) is done without: the share is still computed and applied.

    `siblings`: how many tasks of this step start side by side on this machine (this one included), e.g. the shards
    of a local `foreach`. Their leases appear over a second or two, and a pool sized before the last one appeared
    (an onnxruntime session cannot be resized) would oversubscribe the cores for the whole task; so the share is
    never more than usable cores // siblings."""
    global _lease, _siblings
    _siblings = max(1, siblings)
    folder = folder or core_lease_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        lease = folder / str(os.getpid())
        lease.write_text(_started(os.getpid()) or "")
        _lease = lease
    except OSError as err:
        print(f"no core lease ({err}); sizing threads without one", flush=True)
    return apply(share(folder))


@contextmanager
def lease(siblings: int = 1):
    """`with lease():` hold a core lease (sized pools) for the block, released after it (`siblings`: see
    `take_lease`)."""
    try:
        yield take_lease(siblings=siblings)
    finally:
        release_lease()


def release_lease() -> None:
    global _lease, _siblings
    _siblings = 1
    if _lease is not None:
        _lease.unlink(missing_ok=True)
        _lease = None


def rebalance(folder: Path | None = None) -> int:
    """Re-read the share (other tasks came or went) and resize torch's pool if it changed."""
    return apply(share(folder))


def shared() -> bool:
    """Whether other step processes on this machine hold leases now (then waiting threads must not spin)."""
    return _siblings > 1 or any(pid != os.getpid() for pid in live_leases())


def apply(threads: int) -> int:
    """Give the pools `threads`: the environment for libraries not loaded yet (OpenMP, MKL, OpenBLAS, the
    tokenizers' rayon pool), torch's intra-op pool if torch is loaded."""
    global _applied, _written
    import sys

    explicit = explicit_threads()
    for name in POOL_VARIABLES:
        if not (explicit and name == "OMP_NUM_THREADS"):
            os.environ[name] = str(threads)
    if not explicit:
        _written = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if threads == 1 else "true")
    # read by the served model's onnxruntime sessions (steps/serving/classifier_model.py, which imports nothing
    # of this project): no spinning while other tasks compute beside this one
    os.environ["REVIEWFLOW_SHARED_CORES"] = "1" if shared() else "0"
    torch = sys.modules.get("torch")
    if torch is not None and (_applied != threads or torch.get_num_threads() != threads):
        torch.set_num_threads(threads)
    _applied = threads
    return threads


def describe() -> str:
    """One line on this process's share, for the log: how many threads and why."""
    explicit = explicit_threads()
    if explicit:
        name = next(n for n in EXPLICIT if os.environ.get(n, "").strip() and os.environ[n].strip() != _written)
        return f"{explicit} thread(s), as {name} says"
    tasks = len(set(live_leases()) | {os.getpid()})
    return (f"{share()} thread(s): {usable_cores()} usable core(s) shared by {tasks} task(s) on this machine "
            "(steps/runtime/threads.py)")
