"""Around every step's body: its nested MLflow run, what a retry can and cannot fix, what to do after a crash.

    with step_run(self, "ingest") as run:      # run.metrics(...), run.tags(...), run.json(...)
        ...

- A step that fails on bad input or settings (a ReviewflowError) fails the same way on every attempt, so its
  @retry attempts stop at once with the same message instead of running again.
- A step that crashes for any other reason prints, on its last attempt, the exact command that resumes this run.
- Test-only fault points (steps/runtime/faults.py) fire inside the step's MLflow run, so an injected failure
  marks it FAILED like a real one.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

from metaflow import current

from flowkit.metaflow_internals import datastore_type, retries_of_current_step
from steps.runtime.errors import ReviewflowError

NOT_RUN_AGAIN = "\n(attempt "


@contextmanager
def step_run(flow, step_name: str):
    """The nested MLflow run of the current step under the flow run's parent MLflow run."""
    from steps.runtime import threads, tracking

    same_error = bad_input_of_previous_attempt()
    if same_error:  # @retry cannot be told which errors to retry; bad input gives the same error every time
        raise ReviewflowError(f"{same_error}{NOT_RUN_AGAIN}{current.retry_count + 1}: not run again, the previous "
                              "attempt stopped on bad input or settings, which a retry cannot fix)")
    try:
        with threads.lease(), tracking.step_run(flow.tracking_uri, flow.mlflow_run_id, step_name, current.pathspec,
                                                current.retry_count) as run:  # the lease: this step's share of cores
            fault_point()
            yield run
    except ReviewflowError:
        raise  # bad data or settings: the message says what to fix, and a fixed input needs a new `run`
    except Exception:
        print(resume_hint(flow), flush=True)
        raise


@contextmanager
def closing_flow_run(flow):
    """For `end`, which has no step run of its own: if it crashes, mark the flow's MLflow run FAILED (a resumed
    `end` sets it RUNNING again and finishes it) and say how to resume."""
    try:
        fault_point()
        yield
    except Exception:
        from steps.runtime import tracking

        try:
            tracking.finish_flow_run(flow.tracking_uri, flow.mlflow_run_id, status="FAILED")
        except Exception as err:  # the MLflow store may be what failed; the step's own error matters more
            print(f"could not mark the MLflow run {flow.mlflow_run_id} FAILED: {err}", flush=True)
        print(resume_hint(flow), flush=True)
        raise


def bad_input_of_previous_attempt() -> str | None:
    """The message of the ReviewflowError (bad data or settings) that ended this step's previous attempt, if that
    is how it ended; None on a first attempt, after any other failure, or when it cannot be told."""
    if current.retry_count == 0:
        return None
    import importlib

    from metaflow import Task, get_namespace, namespace

    previous = get_namespace()
    namespace(None)  # the attempt is this run's, whoever's namespace the client is in
    try:
        failure = Task(current.pathspec, attempt=current.retry_count - 1).exception
        module, _, name = failure.type.rpartition(".")
        error_class = getattr(importlib.import_module(module), name)
        if isinstance(error_class, type) and issubclass(error_class, ReviewflowError):
            return failure.exception.split(NOT_RUN_AGAIN)[0].rstrip()  # the original message, once
    except Exception:  # no record of the attempt, or an exception class that cannot be imported here
        pass
    finally:
        namespace(previous)
    return None


def resume_hint(flow) -> str:
    """What to do after a crash: wait for @retry's next attempt, or, on the last attempt, resume this run.
    Metaflow's plain `resume` takes the latest run started with `run`, never a resume, so the hint names this
    run explicitly, with the datastore when it is not the default."""
    retries = retries_of_current_step(flow)
    if current.retry_count < retries:
        return (f"{current.pathspec} failed on attempt {current.retry_count + 1} of {retries + 1}; "
                "@retry runs it again.")
    return (f"{current.pathspec} failed. Once the cause is fixed, continue this run (finished steps are reused, "
            f"training continues from its last epoch checkpoint):\n    {resume_command(flow)}")


def resume_command(flow, from_step: str | None = None) -> str:
    """The command that resumes this run (from `from_step`, even if that step finished), with the datastore when
    it is not the default: Metaflow's plain `resume` would take the latest run started with `run` instead."""
    from metaflow.metaflow_config import DEFAULT_DATASTORE

    from steps.lifecycle.report import script

    flow_file = script(getattr(sys.modules["__main__"], "__file__", "flows/review_flow.py"))
    datastore = datastore_type(flow)
    options = f" --datastore={datastore}" if datastore != DEFAULT_DATASTORE else ""
    step = f" {from_step}" if from_step else ""
    return f"python {flow_file}{options} resume{step} --origin-run-id {current.run_id}"


def fault_point() -> None:
    """Test hook (steps/runtime/faults.py): fails the current step when a test's REVIEWFLOW_FAIL_AT names it."""
    from steps.runtime import faults

    faults.enter_step(current.step_name, current.retry_count)
