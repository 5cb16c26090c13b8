"""Where a task runs (Argo Workflows, a pod of its own, this machine), and acting on drift: the retraining event
on Argo Workflows, or a ReviewFlow run started here (metaflow.Runner)."""
from __future__ import annotations

import os
from pathlib import Path

REVIEW_FLOW = Path(__file__).resolve().parent.parent / "review_flow.py"
LOCAL_MAX_WORKERS = 16  # Metaflow's default --max-workers: tasks a local run starts at once


def on_argo() -> bool:
    """Whether this task runs on Argo Workflows: Metaflow's own test (ArgoEvent publishes only then, unforced)."""
    return bool(os.environ.get("ARGO_WORKFLOW_TEMPLATE"))


def side_by_side(tasks: int) -> int:
    """How many of a foreach's `tasks` run side by side on this task's machine: 1 where each task has a pod or job
    of its own (Argo Workflows, `--with kubernetes`, AWS Batch: its CPU quota is its share); else all of them, at
    most LOCAL_MAX_WORKERS (Metaflow's default `--max-workers`)."""
    if on_argo() or os.environ.get("METAFLOW_KUBERNETES_POD_NAME") or os.environ.get("AWS_BATCH_JOB_ID"):
        return 1
    return max(1, min(tasks, LOCAL_MAX_WORKERS))


def publish(event: str, payload: dict) -> str:
    """Publish `event` to Argo Events (the webhook of the Metaflow config); returns the event id. A failure raises:
    the caller's run fails and the next check raises the event again."""
    from metaflow.integrations import ArgoEvent

    return ArgoEvent(event).publish(payload=payload, force=True, ignore_errors=False)


def run_review_flow(params: dict) -> tuple[str | None, str, dict]:
    """Run ReviewFlow to completion with `params` (Runner keyword arguments), its output shown here; returns
    (its pathspec, status, a few of its results)."""
    from metaflow import Runner

    with Runner(str(REVIEW_FLOW), show_output=True).run(**params) as running:
        run = running.run
        results = {}
        if running.status == "successful":
            data = run.data
            route = getattr(data, "route", None)
            results = {"route": route, "retrain_reason": getattr(data, "retrain_reason", None),
                       "registration": getattr(data, "registration", None) if route != "unchanged" else None}
        return (run.pathspec if run is not None else None), running.status, results
