"""The whole ReviewFlow, run for real with metaflow.Runner on a tiny DistilBERT and a small CSV."""
import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.flow_runs import BRANCH_MODEL, TINY_TRAINING, card_components, run_flow, split_rows

pytestmark = pytest.mark.flow
STEPS = ["ingest", "validate", "split", "tokenize", "train", "evaluate", "register"]


@pytest.fixture
def finished(finished_review_flow):
    """The session's one finished ReviewFlow run (tests/conftest.py), shared with the card and UI tests."""
    return finished_review_flow


def test_flow_registers_a_tagged_champion_that_loads_and_predicts(finished, use_mlflow):
    run, executing, uri = finished
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions(f"name = '{BRANCH_MODEL}'")
    assert len(versions) == 1
    version = versions[0]
    assert version.tags["metaflow_run"] == run.pathspec
    assert version.tags["data_fingerprint"] == run.data.fingerprint
    assert set(client.get_registered_model(BRANCH_MODEL).aliases) == {"challenger", "champion"}
    use_mlflow(uri)
    model = mlflow.pyfunc.load_model(f"models:/{BRANCH_MODEL}@champion")
    out = model.predict(pd.DataFrame({"reviewText": ["the phone is great and i love it",
                                                     "terrible battery , broken and useless"]}),
                        params={"output": "probabilities"})
    assert out["label"].tolist() == [1, 0]
    assert out["probability_positive"].iloc[0] > 0.5 > out["probability_positive"].iloc[1]


def test_flow_logs_one_parent_run_with_a_nested_run_per_step(finished):
    run, executing, uri = finished
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("reviewflow")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["metaflow_run"] == run.pathspec
    assert parent.data.params["epochs"] == "4" and parent.data.params["data"].endswith("reviews.csv")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(STEPS)
    assert all(child.info.status == "FINISHED" for child in children.values())
    assert children["train"].data.tags["metaflow_pathspec"].startswith(run.pathspec + "/train/")
    # the explicit model and epochs pass through --model auto's resolution; the threads as the tests set them
    assert (parent.data.params["model.resolved"], parent.data.params["epochs.resolved"]) == (
        parent.data.params["model"], "4")
    assert parent.data.params["model.why"].startswith("--model ") and parent.data.params["model.why"].endswith(" given")
    assert children["train"].data.params["threads"] == os.environ.get("OMP_NUM_THREADS", "2")
    assert "thread(s), as OMP_NUM_THREADS says" in executing.stdout
    assert children["evaluate"].data.metrics["test_accuracy"] == pytest.approx(run.data.test_metrics["accuracy"])
    inputs = parent.inputs.dataset_inputs
    assert len(inputs) == 1 and inputs[0].dataset.digest == run.data.fingerprint[:36]


def test_flow_artifacts_show_what_happened(finished):
    run, executing, uri = finished
    assert run.successful
    assert sum(len(run.data.tokens[name]) for name in ("train", "validation", "test")) == 400
    assert run.data.test_metrics["accuracy"] >= 0.85  # the synthetic sentiment words are easy to learn
    assert run.data.registration["version"] == 1
    assert "test accuracy" in executing.stdout and f"models:/{BRANCH_MODEL}/1" in executing.stdout


def test_the_datastore_holds_the_reviews_once(finished):
    """After ingest, the steps store positions, not frames: the only stored frames with review texts are the
    reviews and the (here empty) quarantine and ingest set-asides; the splits are disjoint positions of the clean
    rows, which are all rows here."""
    run = finished[0]
    framed, blobs = set(), {}
    for step in run:
        for artifact in step.task.artifacts:
            blobs.setdefault(artifact.id, {})[artifact.sha] = step.id
            data = artifact.data
            if isinstance(data, pd.DataFrame) and "reviewText" in data.columns:
                framed.add(artifact.id)
    assert sorted(framed) == ["ingest_rejects", "quarantine", "reviews"]
    stored_again = {name: shas for name, shas in blobs.items() if len(shas) > 1}
    assert not stored_again, stored_again  # an artifact later steps read is stored once
    positions = run.data.split_rows
    assert sorted(np.concatenate(list(positions.values())).tolist()) == run.data.clean_rows.tolist() == \
        list(range(400))
    assert {name: len(rows) for name, rows in positions.items()} == run.data.split_sizes
    assert split_rows(run, "test")["isPositive"].dtype == "int64"


def test_the_trained_classifier_is_kept_beside_the_datastore_and_its_artifact_names_it(finished):
    """Not gzipped into an artifact: one tar file under the datastore, which train's small artifact names with
    its SHA-256; evaluate read it back from there (the run registered a model that predicts: the first test)."""
    import hashlib

    from steps.training.models import unpacked

    run, _, uri = finished
    train = run["train"].task
    where = train.data.classifier
    datastore = Path(uri.removeprefix("sqlite:///")).parent / ".metaflow"
    expected = datastore / "reviewflow-models" / "ReviewFlow" / run.id / "train" / train.id / "attempt-0"
    assert where["path"] == str(expected.relative_to(datastore)) and os.listdir(expected) == ["classifier.tar"]
    blob = (expected / "classifier.tar").read_bytes()
    assert len(blob) == where["bytes"] and hashlib.sha256(blob).hexdigest() == where["sha256"]
    assert train["classifier"].size < 1000  # the artifact is the reference, not the model
    with unpacked(blob) as model_dir:
        assert {"config.json", "model.safetensors"} <= set(os.listdir(model_dir))


def test_validate_step_reports_and_the_version_keeps_its_training_profile(finished, tmp_path):
    run, executing, uri = finished
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    profile_uri = client.get_model_version(BRANCH_MODEL, "1").tags["training_profile"]
    run_id, _, path = profile_uri.removeprefix("runs:/").partition("/")
    profile = json.loads(Path(client.download_artifacts(run_id, path, str(tmp_path))).read_text())
    assert profile == run.data.training_profile and profile["rows"] == len(split_rows(run, "train"))
    assert run.data.drift["status"] == "no_champion" and "Drift check skipped" in executing.stdout
    experiment = client.get_experiment_by_name("reviewflow")
    (validate,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "validate"]
    assert validate.data.tags["validation"] == "passed" and validate.data.tags["drift_status"] == "no_champion"
    assert validate.data.metrics["rows_clean"] == 400 and validate.data.metrics["rows_quarantined"] == 0
    docs = {a.path for a in client.list_artifacts(validate.info.run_id, "validation/data_docs")}
    assert "validation/data_docs/index.html" in docs
    card = [c["source"].strip() for c in card_components(run["validate"].task, "validation") if c["type"] == "markdown"]
    assert card[0] == "# Data validation passed" and any("has no champion yet" in line for line in card)


def test_a_rerun_on_unchanged_data_and_settings_ends_after_validation(finished, tiny_model_dir):
    """Skip-if-unchanged: same data, model and training settings as the champion -> no training, no version."""
    run, executing, uri = finished
    workdir = Path(uri.removeprefix("sqlite:///")).parent
    again, rerun = run_flow("review_flow.py", workdir, data=str(workdir / "reviews.csv"), model=str(tiny_model_dir),
                            seed=1, **TINY_TRAINING)
    assert rerun.status == "successful", rerun.stderr
    assert [step.id for step in again] == ["end", "validate", "ingest", "start"]  # split..register never ran
    assert again.data.route == "unchanged" and "nothing to train" in again.data.retrain_reason
    assert f"champion v1 ({run.pathspec})" in again.data.retrain_reason
    assert "nothing to retrain" in rerun.stdout
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_model_versions(f"name = '{BRANCH_MODEL}'")) == 1
    parent = client.search_runs([client.get_experiment_by_name("reviewflow").experiment_id],
                                filter_string=f"tags.metaflow_run = '{again.pathspec}'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["outcome"] == "unchanged"


def test_the_registered_version_is_the_evaluated_one_and_mlflow_evaluate_works_on_it(finished, use_mlflow):
    """What is served is what was evaluated: the registered version, loaded as anyone loads it, reproduces the
    recorded test metrics exactly; they are on its LoggedModel (with the test dataset); MLflow's own classifier
    evaluator runs on it as it is and agrees."""
    from schemas import LABEL_COLUMN, TEXT_COLUMN
    from steps.evaluation.metrics import classification_metrics

    run, executing, uri = finished
    use_mlflow(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    test_rows, recorded = split_rows(run, "test"), run.data.test_metrics
    version = client.get_model_version(BRANCH_MODEL, "1")
    assert version.source == run.data.served_model["model_uri"]  # registered exactly the model evaluate scored
    model = mlflow.pyfunc.load_model(f"models:/{BRANCH_MODEL}/1")
    scored = model.predict(test_rows[[TEXT_COLUMN]], params={"output": "probabilities"})
    # the evaluate step scored the test rows once, with the backend it then logged: the logged model gives the same
    # numbers row by row
    assert np.array_equal(scored["probability_positive"].to_numpy(), run.data.test_probabilities)
    assert classification_metrics(test_rows[LABEL_COLUMN], scored["probability_positive"]) == recorded
    assert version.tags["serving.backend"] == run.data.served_model["backend"]
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    metrics = {m.key: m for m in logged.metrics}
    assert metrics["test_f1"].value == pytest.approx(recorded["f1"]) and metrics["test_f1"].dataset_name == "test"
    # object, not pandas' string dtype: MLflow 3.17's SHAP step calls np.issubdtype on every feature column's dtype,
    # which numpy cannot do for pandas' StringDtype (docs/model-lifecycle.md)
    frame = test_rows[[TEXT_COLUMN, LABEL_COLUMN]].astype({TEXT_COLUMN: object})
    result = mlflow.models.evaluate(f"models:/{BRANCH_MODEL}@champion", frame, targets=LABEL_COLUMN,
                                    model_type="classifier", predictions="label")
    assert result.metrics["accuracy_score"] == pytest.approx(recorded["accuracy"], abs=1e-12)
    assert result.metrics["f1_score"] == pytest.approx(recorded["f1"], abs=1e-12)


def test_the_baseline_and_the_explanations_sit_beside_the_model(finished, tmp_path, use_mlflow):
    """The evaluate step trains the TF-IDF baseline on the train split and scores it on the test rows (MLflow
    metrics, a loadable model, the summary, the gate's record), and explains test reviews word by word."""
    run, executing, uri = finished
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    baseline, test_rows = run.data.baseline, split_rows(run, "test")
    assert baseline["metrics"]["rows"] == run.data.test_metrics["rows"] == len(test_rows)
    (evaluate,) = [r for r in client.search_runs([client.get_experiment_by_name("reviewflow").experiment_id])
                   if r.info.run_name == "evaluate"]
    assert evaluate.data.metrics["baseline_test_f1"] == pytest.approx(baseline["metrics"]["f1"])
    assert baseline["model_uri"] == f"runs:/{evaluate.info.run_id}/baseline"
    use_mlflow(uri)
    scored = mlflow.pyfunc.load_model(baseline["model_uri"]).predict(test_rows[["reviewText"]],
                                                                     params={"output": "probabilities"})
    assert scored.columns.tolist() == ["label", "probability_positive"]
    assert (scored["label"] == test_rows["isPositive"]).mean() == pytest.approx(
        baseline["metrics"]["accuracy"])
    summary = run.data.run_summary
    assert "| baseline   | TF-IDF (word 1-2 grams) + logistic regression: accuracy " in summary
    assert f"model: {baseline['model_uri']}" in summary
    verdict = run.data.gate_verdict
    assert verdict["extra"]["baseline_f1"] == f"{baseline['metrics']['f1']:.6f}"
    assert verdict["reasons"][-1].endswith("(not required: --ignore-baseline)")  # tests/flow_runs.py: TINY_TRAINING
    tags = client.get_model_version(BRANCH_MODEL, "1").tags
    assert tags["gate.baseline_f1"] == verdict["extra"]["baseline_f1"] and tags["gate.ignore_baseline"] == "true"

    explained = run.data.explanations
    errors = [r for r in explained["reviews"] if r["kind"] == "error"]
    evaluation = Path(client.download_artifacts(evaluate.info.run_id, "evaluation/evaluation.json", str(tmp_path)))
    confident = json.loads(evaluation.read_text())["confident_errors"]
    assert [r["row"] for r in errors] == [e["row"] for e in confident][:5]  # the most confident first
    assert len(explained["reviews"]) - len(errors) == 3 and explained["n_steps"] == 32
    for review in explained["reviews"]:
        assert review["text"] == " ".join(test_rows["reviewText"][review["row"]].split())
        total = sum(t["score"] for t in review["tokens"])
        change = review["logit_difference"] - review["reference_logit_difference"]
        assert abs(total - change) == pytest.approx(abs(review["delta"]), abs=1e-4)
    assert evaluate.data.metrics["explain_seconds_per_review"] == pytest.approx(explained["seconds_per_review"])
    saved = Path(client.download_artifacts(evaluate.info.run_id, "explanations/explanations.json", str(tmp_path)))
    assert json.loads(saved.read_text())["reviews"][0]["words"] == explained["reviews"][0]["words"]
    card = "\n".join(c["source"] for c in card_components(run["evaluate"].task, "evaluation")
                     if c["type"] == "markdown")
    assert "## This model vs the TF-IDF baseline (same test rows)" in card
    assert "## Which words drove the predictions" in card and card.count('<span style="background-color') >= 5


def test_predict_flow_explain_adds_the_most_influential_words(finished, tiny_model_dir):
    """PredictFlow --explain 2 with the champion: every row gets its two strongest words, signed."""
    run, executing, uri = finished
    workdir = Path(uri.removeprefix("sqlite:///")).parent
    pd.DataFrame({"reviewText": ["the camera is great", "broken and useless", "phone"]}).to_csv(
        workdir / "to_explain.csv", index=False)
    predicted, predicting = run_flow("predict_flow.py", workdir, data="to_explain.csv", output="explained.csv",
                                     explain=2, explain_steps=20)
    assert predicting.status == "successful", predicting.stderr[-3000:]
    out = pd.read_csv(workdir / "explained.csv")
    tops = [json.loads(cell) for cell in out["top_tokens"]]
    assert [len(t) for t in tops] == [2, 2, 1]
    assert all(t["token"] in text.split() for text, top in zip(out["reviewText"], tops) for t in top)
    assert {t["token"] for t in tops[1]} == {"broken", "useless"} and all(t["score"] < 0 for t in tops[1])
    assert predicted.data.summary["explain_seconds_per_review"] > 0
    assert "explain_seconds_per_review" in predicting.stdout
