"""Fault injection for tests: make a chosen point of a run fail, to prove that @retry and `resume` lose nothing.

TEST-ONLY. This is not a setting: no flow Parameter, no help text and no user documentation names it, and with
the variable unset (every real run) `inject` does nothing. Tests set REVIEWFLOW_FAIL_AT in the environment of
the run they want to break and leave it out of the `resume` that follows, so the fault belongs to one run.

    REVIEWFLOW_FAIL_AT=<point>[=<mode>][@first][,<point>...]

points   a step's name (the start of its body: start, ingest, validate, split, tokenize, train, evaluate,
         register, end); train/after_epoch_<N> (epoch N is finished and checkpointed);
         register/after_version (the model version exists, its aliases are not set yet);
         predict/shard_<k> (PredictFlow: shard k, counted from 0, has its model and has scored nothing yet);
         tune/trial_<n> (TuneFlow: trial n, counted from 0, has its recipe and MLflow run, trains nothing yet);
         promote/after_alias (`champion` was moved, the move is not yet in the audit trail)
mode     raise (default): raise InjectedFault; kill: SIGKILL this process (a lost task);
         hang: stop here until killed from outside (a test then kills the whole run, as a lost machine would)
@first   only on a step's first attempt, so that its @retry succeeds; without it every attempt fails
"""
from __future__ import annotations

import os
import signal
import time

FAIL_AT = "REVIEWFLOW_FAIL_AT"
MODES = ("raise", "kill", "hang")
HANG_LIMIT_SECONDS = 900  # a hung task that nobody kills gives up instead of hanging a test run forever

_attempt = 0  # the attempt of the step running in this process (0 = first), set by enter_step


class InjectedFault(RuntimeError):
    """A failure made on purpose by a test (REVIEWFLOW_FAIL_AT)."""


def _faults() -> dict[str, tuple[str, bool]]:
    """{point: (mode, first_attempt_only)} from REVIEWFLOW_FAIL_AT."""
    faults = {}
    for entry in os.environ.get(FAIL_AT, "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        entry, first_only = (entry[:-len("@first")], True) if entry.endswith("@first") else (entry, False)
        point, _, mode = entry.partition("=")
        mode = mode or "raise"
        if mode not in MODES:
            raise ValueError(f"{FAIL_AT}: unknown mode {mode!r} for {point!r}; use one of {', '.join(MODES)}")
        faults[point] = (mode, first_only)
    return faults


def inject(point: str) -> None:
    """Fail here if REVIEWFLOW_FAIL_AT names `point` (and, for @first, this is the step's first attempt)."""
    fault = _faults().get(point)
    if fault is None:
        return
    mode, first_only = fault
    if first_only and _attempt > 0:
        return
    print(f"{FAIL_AT}: injected fault at {point} ({mode}, attempt {_attempt})", flush=True)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "hang":
        deadline = time.monotonic() + HANG_LIMIT_SECONDS
        while time.monotonic() < deadline:  # a line now and then: Metaflow relays a task's output as more arrives
            print(f"{FAIL_AT}: waiting at {point} to be killed", flush=True)
            time.sleep(0.5)
    raise InjectedFault(f"{FAIL_AT}: injected fault at {point} (attempt {_attempt})")


def enter_step(step_name: str, attempt: int) -> None:
    """Called at the start of each step's body: remember the attempt, and fail if the step is a fault point."""
    global _attempt
    _attempt = attempt
    inject(step_name)
