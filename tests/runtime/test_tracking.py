import pytest
from mlflow import MlflowClient

from steps.runtime import tracking


def test_parent_and_nested_step_runs(tracking_uri):
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "17", {"epochs": 2, "data": "x.csv"})
    with tracking.step_run(tracking_uri, parent, "ingest", "ReviewFlow/17/ingest/2") as run:
        run.params({"rows": 10})
        for step in range(450):  # more than one batch
            run.metrics({"loss": 1.0 / (step + 1), "not_a_number": float("nan")}, step=step)
    tracking.finish_flow_run(tracking_uri, parent)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.tags["metaflow_run"] == "ReviewFlow/17"
    assert parent_run.data.params == {"epochs": "2", "data": "x.csv"}
    child = client.get_run(run.run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["metaflow_pathspec"] == "ReviewFlow/17/ingest/2"
    assert len(client.get_metric_history(run.run_id, "loss")) == 450
    assert "not_a_number" not in child.data.metrics


def test_failed_step_marks_its_run_and_parent_failed_and_resume_reopens_parent(tracking_uri):
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "18", {})
    with pytest.raises(RuntimeError), tracking.step_run(tracking_uri, parent, "train", "ReviewFlow/18/train/6") as run:
            run.metrics({"train_loss": 0.5}, step=1)
            raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert client.get_run(run.run_id).data.metrics["train_loss"] == 0.5  # buffered metrics were flushed
    assert client.get_run(parent).info.status == "FAILED"
    with tracking.step_run(tracking_uri, parent, "train", "ReviewFlow/19/train/6"):
        assert client.get_run(parent).info.status == "RUNNING"
    assert client.get_run(parent).data.tags["resumed"] == "true"


def test_default_tracking_uri_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri() == "http://127.0.0.1:5000"


def test_a_step_closes_the_runs_that_dead_processes_left_running(tracking_uri):
    """kill -9 leaves a step run RUNNING; the resumed (or retried) step marks it KILLED, others are left alone."""
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "20", {})
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment = client.get_run(parent).info.experiment_id

    def left_running(step, pathspec):  # what a SIGKILLed step leaves behind: a nested run nobody ended
        return client.create_run(experiment, run_name=step, tags={
            "mlflow.parentRunId": parent, "metaflow_step": step, "metaflow_pathspec": pathspec}).info.run_id

    killed_in_origin = left_running("train", "ReviewFlow/20/train/6")
    earlier_attempt = left_running("evaluate", "ReviewFlow/21/evaluate/9")
    sibling = left_running("evaluate", "ReviewFlow/21/evaluate/10")  # another task of the resumed run
    with tracking.step_run(tracking_uri, parent, "evaluate", "ReviewFlow/21/evaluate/9", attempt=1):
        pass
    for run_id in (killed_in_origin, earlier_attempt):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.info.end_time
        assert "closed when ReviewFlow/21/evaluate/9 started" in run.data.tags[tracking.CLOSED_REASON]
    assert client.get_run(sibling).info.status == "RUNNING"
    tags = client.get_run(parent).data.tags
    assert tags["metaflow_run"] == "ReviewFlow/20" and tags[tracking.RESUMED_IN] == "ReviewFlow/21"
    with tracking.step_run(tracking_uri, parent, "register", "ReviewFlow/22/register/11"):
        pass
    with tracking.step_run(tracking_uri, parent, "end", "ReviewFlow/22/end/12"):
        pass
    assert client.get_run(parent).data.tags[tracking.RESUMED_IN] == "ReviewFlow/21,ReviewFlow/22"
    assert client.get_run(sibling).info.status == "KILLED"  # ReviewFlow/21 is over once ReviewFlow/22 runs
