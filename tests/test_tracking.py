import pytest
from mlflow import MlflowClient

from steps import tracking


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
    with pytest.raises(RuntimeError):
        with tracking.step_run(tracking_uri, parent, "train", "ReviewFlow/18/train/6") as run:
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
