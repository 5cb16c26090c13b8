"""The model lifecycle end to end with real flows (metaflow.Runner) on one MLflow store:

ReviewFlow trains a good model (v1 -> champion) and a badly trained one (v2, run with --min-f1 0 so that only
the no-regression rule can stop it: it regresses against v1 -> challenger, gate=failed). PromoteFlow refuses v2,
forces it (recorded), promotes v1 back through the re-checked gate, rolls back, shows the history. PredictFlow
scores a text-only file; `mlflow models serve` answers over HTTP with the champion's predictions.
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from steps.lifecycle import promotion
from tests.fixtures import write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, TINY_TRAINING, flow_env, run_flow

pytestmark = pytest.mark.flow
NAME = BRANCH_MODEL
BAD_TRAINING = {**TINY_TRAINING, "epochs": 1, "learning_rate": 1e-6, "min_f1": 0.0}
NEW_REVIEWS = ["the phone is great and i love it", "terrible battery , broken and useless", "ok", ""]


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("lifecycle")
    data = write_reviews_csv(workdir / "reviews.csv", rows=400)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    steps = {}

    def record(label, flow_file, **params):
        run, executing = run_flow(flow_file, workdir, **params)
        steps[label] = (run, executing)
        return run, executing

    for label, training in (("good", TINY_TRAINING), ("bad", BAD_TRAINING)):
        run, executing = record(label, "review_flow.py", data=str(data), model=str(tiny_model_dir), seed=1,
                                **training)
        assert executing.status == "successful", executing.stderr[-3000:]
    record("promote_challenger", "promote_flow.py", version="challenger")
    record("force", "promote_flow.py", version="2", force=True, reason="canary: try v2 on 5% of traffic")
    record("promote_v1", "promote_flow.py", version="1", reason="v1 is better on the same test rows")
    record("rollback", "promote_flow.py", rollback=True, reason="undo: back to the canary")
    record("history", "promote_flow.py", history=True)
    pd.DataFrame({"reviewText": NEW_REVIEWS}).to_csv(workdir / "new_reviews.csv", index=False)
    record("predict", "predict_flow.py", data="new_reviews.csv", output="preds.csv", batch_size=2)
    return workdir, uri, steps, MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_first_model_is_champion_and_a_worse_one_stays_challenger_with_gate_failed(lifecycle):
    workdir, uri, steps, client = lifecycle
    good, bad = steps["good"][0], steps["bad"][0]
    assert good.data.registration["aliases"] == ["challenger", "champion"]
    assert good.data.registration["gate"] == "passed"
    assert good.data.champion_comparison is None  # nothing to compare with yet

    # the floor (0) is cleared, so it is the regression against the champion that keeps it out
    assert bad.data.gate_verdict["reasons"][0].endswith(">= floor 0")
    assert bad.data.registration["version"] == 2 and bad.data.registration["aliases"] == ["challenger"]
    comparison = bad.data.champion_comparison
    assert comparison["champion_version"] == 1 and comparison["delta"]["f1"] < 0
    assert comparison["champion"]["f1"] == pytest.approx(good.data.test_metrics["f1"])  # same test rows, same split
    assert comparison["mcnemar"]["p_value"] < 0.05
    tags = client.get_model_version(NAME, "2").tags
    assert tags["gate"] == "failed" and tags["gate.champion_version"] == "1"
    assert "exceeds the allowed regression" in tags["gate.reasons"]
    assert float(tags["gate.f1_delta"]) == pytest.approx(comparison["delta"]["f1"], abs=1e-6)
    assert "promotion gate: failed" in steps["bad"][1].stdout


def test_evaluate_logs_metrics_plots_and_a_card(lifecycle):
    workdir, uri, steps, client = lifecycle
    bad = steps["bad"][0]
    experiment = client.get_experiment_by_name("reviewflow")
    [evaluate_run] = client.search_runs(
        [experiment.experiment_id], f"tags.metaflow_pathspec LIKE '{bad.pathspec}/evaluate/%'")
    metrics = evaluate_run.data.metrics
    for key in ("test_f1", "test_ece", "test_log_loss", "test_roc_auc", "champion_test_f1", "delta_test_f1",
                "mcnemar_p_value", "test_accuracy.tokens.1-16"):
        assert key in metrics, key
    assert 0 <= metrics["test_ece"] <= 1
    plots = {a.path for a in client.list_artifacts(evaluate_run.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/roc_curve.png", "plots/reliability_diagram.png",
                     "plots/loss_curves.png"}
    from metaflow.cards import get_cards

    [card] = get_cards(bad["evaluate"].task, id="evaluation")
    components = _card_components(card.get())
    images = [c["label"] for c in components if c["type"] == "image"]
    assert images == ["confusion matrix", "roc curve", "reliability diagram", "loss curves"]
    assert all(c["src"].startswith("data:image/png;base64") for c in components if c["type"] == "image")
    text = " ".join(c.get("source", "") for c in components if c["type"] == "markdown")
    assert "**Promotion gate: failed**" in text and "champion v1" in text and "McNemar exact" in text


def _card_components(html: str) -> list:
    """The components a Metaflow card renders (the card embeds them as base64 JSON)."""
    import base64
    import re

    encoded = re.search(r'__MF_DATA__\["[^"]+"\] = "([^"]+)"', html).group(1)
    flat, todo = [], json.loads(base64.b64decode(encoded))["components"]
    while todo:
        component = todo.pop(0)
        if component.get("type") in ("page", "section"):
            todo[:0] = component.get("contents", [])
        else:
            flat.append(component)
    return flat


def test_promote_flow_gate_force_promote_rollback_history(lifecycle):
    workdir, uri, steps, client = lifecycle
    refused = steps["promote_challenger"][1]
    assert refused.status == "failed"
    assert "did not pass the promotion gate" in refused.stdout + refused.stderr
    assert steps["force"][1].status == "successful" and "v1 -> v2 (force)" in steps["force"][1].stdout
    promoted = steps["promote_v1"][1]
    assert promoted.status == "successful" and "gate passed on 80 test rows" in promoted.stdout
    assert "v2 -> v1 (promote)" in promoted.stdout
    assert "v1 -> v2 (rollback)" in steps["rollback"][1].stdout

    trail = promotion.history(client, NAME)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in trail] == [
        ("auto", None, 1), ("force", 1, 2), ("promote", 2, 1), ("rollback", 1, 2)]
    forced = trail[1]
    assert forced["reason"] == "canary: try v2 on 5% of traffic" and forced["gate"] == "failed (forced)"
    assert forced["metaflow_run"] == steps["force"][0].pathspec and forced["user"] == "reviewflow-tests"
    assert trail[0]["metaflow_run"] == steps["good"][0].pathspec
    assert promotion.alias_version(client, NAME, "champion") == 2

    history_run, history = steps["history"]
    assert history.status == "successful" and history_run.data.champion == 2
    assert len(history_run.data.audit_trail) == 4 and "rollback" in history.stdout
    assert "undo: back to the canary" in history.stdout


def _champion_predictions(uri, texts, batch_size: int = 64):
    """The champion's answers, in batches of `batch_size` as the caller scored them: with the int8 backend a
    review's probability depends a little on its batch-mates (activations are quantized per batch)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", model_config={"batch_size": batch_size})
    return model.predict(pd.DataFrame({"reviewText": texts}), params={"output": "probabilities"})


def test_predict_flow_scores_a_text_only_file_with_the_champion(lifecycle, use_mlflow):
    workdir, uri, steps, client = lifecycle
    assert steps["predict"][1].status == "successful", steps["predict"][1].stderr[-3000:]
    preds = pd.read_csv(workdir / "preds.csv", keep_default_na=False)
    assert list(preds.columns) == ["source_file", "source_row", "reviewText", "label", "probability_positive",
                                   "unscored_reason", "model_name", "model_version"]
    assert preds["reviewText"].tolist() == NEW_REVIEWS  # one row out per row in, same order
    assert preds["source_row"].tolist() == list(range(1, len(NEW_REVIEWS) + 1))
    assert (preds["model_name"] == NAME).all() and (preds["model_version"] == 2).all()
    # the empty review is not scored: no label, its reason; the others are the champion's answers
    assert preds["unscored_reason"].tolist() == ["", "", "", "missing_text"]
    assert preds["label"].iloc[3] == "" and preds["probability_positive"].iloc[3] == ""
    use_mlflow(uri)
    expected = _champion_predictions(uri, NEW_REVIEWS[:3], batch_size=2)  # as PredictFlow ran (--batch-size 2)
    assert preds["label"].iloc[:3].astype(int).tolist() == expected["label"].tolist()
    assert preds["probability_positive"].iloc[:3].astype(float).to_numpy() == pytest.approx(
        expected["probability_positive"].to_numpy())
    assert steps["predict"][0].data.summary["unscored_missing_text"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_with_the_champion(lifecycle, use_mlflow, tmp_path):
    workdir, uri, steps, client = lifecycle
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - the server writes to it until the finally below
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **flow_env(workdir)}, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the uvicorn worker it starts is stopped with it
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, Path(tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not answer /ping within 180 s"
            time.sleep(1)
        records = [{"reviewText": t} for t in NEW_REVIEWS[:2]]
        answers = []
        for request_body in ({"dataframe_records": records},  # labels, the default
                             {"dataframe_records": records, "params": {"output": "probabilities"}}):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                             data=json.dumps(request_body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append(json.loads(response.read()))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    labels, predictions = answers[0]["predictions"], answers[1]["predictions"]
    assert [sorted(p) for p in predictions] == [["label", "probability_positive"]] * 2
    use_mlflow(uri)
    expected = _champion_predictions(uri, NEW_REVIEWS[:2])
    assert [p["label"] for p in predictions] == expected["label"].tolist()
    assert labels == [{"label": p["label"]} for p in predictions]  # the default answer: the label column alone
    assert [p["probability_positive"] for p in predictions] == pytest.approx(
        expected["probability_positive"].tolist())
