"""Monitoring end to end with real flows: PredictFlow writes the inference log, MonitorFlow reads it since its last
check and compares it with the champion (tiny DistilBERT trained by the session's ReviewFlow run).

- requests like the training data: no drift, no event;
- drifted requests added to the same log: the next check reads only them, finds drift, and (not on Argo
  Workflows) prints the ReviewFlow command to run; a check after that finds no new records and claims nothing;
- a drifted log on S3 with --on-drift retrain: ReviewFlow is started through metaflow.Runner (the data is the
  champion's, so it ends early as `unchanged`, which keeps the test fast and the registry as it was);
- a drifted log checked "on Argo" (ARGO_WORKFLOW_TEMPLATE set, the Argo Events webhook a local HTTP server):
  the reviews_landed event is published with the drift in its payload.
"""
import json
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import mlflow
import pandas as pd
import pytest

from steps.serving.inference_log import InferenceLog
from tests.fixtures import review_frame
from tests.flow_runs import BRANCH_MODEL, TINY_TRAINING, card_components, cli_options, run_flow, store_client

pytestmark = pytest.mark.flow
NAME = BRANCH_MODEL  # what a run on the tests' branch registers and watches


def drifted_texts(rows: int = 260) -> list[str]:
    frame = review_frame(rows, seed=11)
    return (frame["reviewText"] + " Привет, zebra quokka wombat, совсем не то").tolist()


def write_drifted_log(location: str, uri: str) -> None:
    """What the served champion would have logged for drifted requests: its own predictions, in several requests."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    version = store_client(uri).get_model_version_by_alias(NAME, "champion").version
    texts = drifted_texts()
    log = InferenceLog(location, flush_seconds=60)
    for start in range(0, len(texts), 50):
        batch = texts[start:start + 50]
        scores = model.predict(pd.DataFrame({"reviewText": batch}), params={"output": "probabilities"})
        log.record(batch, scores["label"], scores["probability_positive"], NAME, version)
        assert log.flush(timeout=30)
    assert log.close()["records_written"] == len(texts)


class Webhook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Webhook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def monitored(finished_review_flow_once, tiny_model_dir, s3_server, tmp_path_factory, use_mlflow_module):
    _, _, source = finished_review_flow_once
    workdir = tmp_path_factory.mktemp("monitoring")
    shutil.copytree(source, workdir, dirs_exist_ok=True)  # its own registry and runs: retraining may change them
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    runs = {}

    # requests like the training data, scored by PredictFlow, which writes them to the inference log
    fresh = review_frame(300, seed=9).rename(columns={"reviewText": "body"})[["reviewId", "body"]]
    fresh.to_csv(workdir / "fresh.csv", index=False)
    log_a = workdir / "log-a"
    runs["predict"] = run_flow("predict_flow.py", workdir, env={"REVIEWFLOW_INFERENCE_LOG": str(log_a)},
                               data="fresh.csv", text_column="body", output="fresh-preds.parquet")
    monitor = {"settle_seconds": 0}
    runs["undrifted"] = run_flow("monitor_flow.py", workdir, log=str(log_a), **monitor)
    write_drifted_log(str(log_a), uri)  # new files in the same log: the next check reads only those
    runs["drifted"] = run_flow("monitor_flow.py", workdir, log=str(log_a), **monitor)
    runs["again"] = run_flow("monitor_flow.py", workdir, log=str(log_a), **monitor)

    s3_log = f"s3://{s3_server.bucket}/inference/{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env().items():
            patch.setenv(key, value)
        write_drifted_log(s3_log, uri)
    retrain_args = (f"--data {workdir / 'reviews.csv'} --model {tiny_model_dir} --seed 1 "
                    + " ".join(cli_options(TINY_TRAINING)))
    runs["retrain"] = run_flow("monitor_flow.py", workdir, env=s3_server.env(), log=s3_log, on_drift="retrain",
                               retrain_args=retrain_args, **monitor)

    write_drifted_log(str(workdir / "log-c"), uri)
    server = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Webhook.received.clear()
    try:
        argo = {"ARGO_WORKFLOW_TEMPLATE": "monitorflow-test", "METAFLOW_ARGO_EVENTS_WEBHOOK_URL":
                f"http://127.0.0.1:{server.server_port}/metaflow-event"}
        runs["argo"] = run_flow("monitor_flow.py", workdir, env=argo, log=str(workdir / "log-c"), settle_seconds=0,
                                registered_model="review-classifier")
    finally:
        server.shutdown()
    return workdir, uri, runs, list(Webhook.received)


@pytest.fixture(scope="module")
def use_mlflow_module():
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def mlflow_parent(uri, run):
    client = store_client(uri)
    experiment = client.get_experiment_by_name("reviewflow").experiment_id
    [parent] = client.search_runs([experiment], f"tags.metaflow_run = '{run.pathspec}'")
    return client, parent


def test_predict_flow_writes_the_inference_log_and_a_named_text_column(monitored):
    workdir, uri, runs, _ = monitored
    run, executing = runs["predict"]
    assert executing.status == "successful", executing.stderr[-3000:]
    preds = pd.read_parquet(workdir / "fresh-preds.parquet")
    assert list(preds.columns) == ["source_file", "source_row", "body", "reviewId", "label", "probability_positive",
                                   "unscored_reason", "model_name", "model_version"]
    assert run.data.inference_log["records_written"] == 300 and run.data.inference_log["failed_writes"] == 0
    assert "Throughput:" in executing.stdout and "texts/s" in executing.stdout
    client, parent = mlflow_parent(uri, run)
    assert parent.data.metrics["texts_per_s"] > 0 and parent.data.metrics["inference_log_records_written"] == 300
    logged = pd.concat(pd.read_json(p, lines=True, dtype=False) for p in sorted((workdir / "log-a").rglob("*.jsonl")))
    assert set(preds["body"]) <= set(logged["text"]) and len(logged) == 300 + len(drifted_texts())


def test_requests_like_the_training_data_raise_no_event(monitored):
    workdir, uri, runs, _ = monitored
    run, executing = runs["undrifted"]
    assert executing.status == "successful", executing.stderr[-3000:]
    report = run.data.report
    assert report["status"] in ("stable", "moderate") and report["drift"] is False and report["records"] == 300
    assert run.data.action == "none: no drift" and "review_flow.py run" not in executing.stdout
    client, parent = mlflow_parent(uri, run)
    assert parent.data.tags["drift"] == "false" and parent.data.tags["monitor_watermark"] == run.data.watermark != ""
    [check] = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert check.data.tags["drift"] == "false" and check.data.metrics["records"] == 300
    figures = {a.path for a in client.list_artifacts(check.info.run_id, "monitoring")}
    assert figures == {"monitoring/input_drift.png", "monitoring/prediction_drift.png", "monitoring/report.json"}
    components = card_components(run["end"].task, "monitoring")
    assert [c["label"] for c in components if c["type"] == "image"] == ["input drift", "prediction drift"]
    heading = next(c["source"] for c in components if c["type"] == "markdown")
    assert heading.startswith("# No drift against champion v1")


def test_new_drifted_records_in_the_same_log_are_read_alone_and_drift(monitored):
    workdir, uri, runs, _ = monitored
    first, _ = runs["undrifted"]
    run, executing = runs["drifted"]
    assert executing.status == "successful", executing.stderr[-3000:]
    assert run.data.previous_watermark == first.data.watermark and run.data.watermark > first.data.watermark
    report = run.data.report
    assert report["records"] == len(drifted_texts())  # only the files after the watermark
    assert report["drift"] is True and {"charset", "vocabulary", "text_chars"} <= set(report["drifted"])
    assert "python flows/review_flow.py run" in executing.stdout and "not on Argo Workflows" in run.data.action
    assert run.data.event_id is None and run.data.retrain_run is None
    assert mlflow_parent(uri, run)[1].data.tags["drift"] == "true"
    components = card_components(run["end"].task, "monitoring")
    heading = next(c["source"] for c in components if c["type"] == "markdown")
    assert heading.startswith("# Drift against champion v1: ") and "vocabulary" in heading


def test_a_check_without_new_records_claims_nothing(monitored):
    workdir, uri, runs, _ = monitored
    previous, _ = runs["drifted"]
    run, executing = runs["again"]
    assert executing.status == "successful", executing.stderr[-3000:]
    assert run.data.report["status"] == "too_few" and run.data.report["records"] == 0
    assert "Too few new records to judge drift: 0 since the last check" in executing.stdout
    assert run.data.previous_watermark == previous.data.watermark == run.data.watermark
    assert run.data.action == "none: not judged"
    parent = mlflow_parent(uri, run)[1]
    assert parent.data.tags["drift"] == "not_judged" and parent.data.tags["drift_status"] == "too_few"
    check = [r for r in store_client(uri).search_runs([parent.info.experiment_id],
                                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}'")]
    assert [r.data.tags["drift"] for r in check] == ["not_judged"] and "drift" not in check[0].data.metrics


def test_drift_with_retrain_starts_review_flow(monitored):
    workdir, uri, runs, _ = monitored
    run, executing = runs["retrain"]
    assert executing.status == "successful", executing.stdout[-3000:] + executing.stderr[-3000:]
    assert run.data.report["drift"] is True and run.data.location.startswith("s3://")
    assert run.data.retrain_run.startswith("ReviewFlow/")
    assert run.data.action.startswith(f"ran {run.data.retrain_run}: successful (unchanged:")
    client = store_client(uri)
    assert [int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")] == [1]  # nothing new to train


def test_on_argo_drift_publishes_the_retraining_event(monitored):
    workdir, uri, runs, received = monitored
    run, executing = runs["argo"]
    assert executing.status == "successful", executing.stderr[-3000:]
    assert run.data.report["drift"] is True and run.data.event_id
    [event] = received
    assert event["name"] == "reviews_landed" and event["payload"]["id"] == run.data.event_id
    payload = event["payload"]
    assert payload["monitor_run"] == run.pathspec and payload["monitor_log"] == str(workdir / "log-c")
    assert "vocabulary" in payload["monitor_drifted"].split(",") and payload["monitor_champion_version"] == "1"
    assert run.data.action == f"published event reviews_landed (id {run.data.event_id})"
