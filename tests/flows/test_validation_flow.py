"""ReviewFlow on bad data, run for real (metaflow.Runner): it stops before split, registers nothing, and an
existing champion stays where it was. The full corpus of bad inputs is covered without flows in
test_bad_inputs.py; these runs check the flow's behaviour for each way of stopping (ingest, validate, drift)."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tests.fixtures import review_frame, served_model_uri
from tests.flow_runs import BRANCH_MODEL, card_components, run_flow, store_client

pytestmark = pytest.mark.flow
MODEL = BRANCH_MODEL


def registry_state(uri: str) -> dict:
    client = store_client(uri)
    models = client.search_registered_models()
    if not models:
        return {}
    return {"versions": sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")),
            "aliases": dict(client.get_registered_model(MODEL).aliases)}


def step_runs(uri: str) -> dict:
    client = store_client(uri)
    experiment = client.get_experiment_by_name("reviewflow")
    flow_runs = [r for r in client.search_runs([experiment.experiment_id])
                 if r.data.tags.get("mlflow.parentRunId") and r.info.start_time]
    latest_parent = max(flow_runs, key=lambda r: r.info.start_time).data.tags["mlflow.parentRunId"]
    return {r.info.run_name: r for r in flow_runs if r.data.tags["mlflow.parentRunId"] == latest_parent}


def markdown(card: list[dict]) -> list[str]:
    return [c["source"].strip() for c in card if c["type"] == "markdown"]


def output(executing) -> str:
    return executing.stdout + executing.stderr


@pytest.fixture(scope="module")
def champion_workdir(tmp_path_factory, tiny_model_dir):
    """A workdir whose MLflow registry already has a champion (version 1) with a training profile."""
    from steps.data.drift import store_training_profile, training_profile
    from steps.data.split import split_reviews
    from steps.evaluation import gate
    from steps.lifecycle import registry
    from steps.runtime import tracking
    from steps.training.models import load_classifier, load_tokenizer
    from steps.training.tokenize import tokenize_split

    workdir = tmp_path_factory.mktemp("champion")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    classifier_dir = workdir / "classifier"
    load_classifier(str(tiny_model_dir)).save_pretrained(classifier_dir)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.save_pretrained(classifier_dir)
    parts = split_reviews(review_frame(400), seed=1)
    tokens = tokenize_split(parts.frames(), tokenizer, 32)
    profile = training_profile(parts.train, tokens["train"], tokens["validation"], tokenizer, str(tiny_model_dir), 32)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_registry_uri(uri)
        parent = tracking.start_flow_run(uri, "ReviewFlow", "1", {})
        with tracking.step_run(uri, parent, "register", "ReviewFlow/1/register/8") as run:
            registration = registry.register(run.client, MODEL, served_model_uri(classifier_dir), "ReviewFlow/1",
                                             {}, verdict=gate.judge(0.8))
            store_training_profile(run, MODEL, registration.version, profile)
        tracking.finish_flow_run(uri, parent)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert registry_state(uri) == {"versions": [1], "aliases": {"challenger": 1, "champion": 1}}
    return workdir, uri


def test_unmapped_labels_stop_the_flow_at_ingest_and_nothing_is_registered(tmp_path, tiny_model_dir):
    data = tmp_path / "stars.csv"
    review_frame(100).assign(isPositive=lambda f: 1 + f.index % 5).to_csv(data, index=False)
    run, executing = run_flow("review_flow.py", tmp_path / "work", data=str(data), model=str(tiny_model_dir),
                              max_length=32)
    assert executing.status == "failed" and executing.returncode != 0 and not run.successful
    assert "column 'isPositive' holds labels outside the contract" in output(executing)
    assert "--positive-if '>=4'" in output(executing)
    assert [step.id for step in run] == ["ingest", "start"]  # stopped before validate and split
    uri = f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}"
    assert registry_state(uri) == {}
    runs = step_runs(uri)
    assert runs["ingest"].info.status == "FAILED"
    # ingest has @retry(times=2) for flaky storage; bad input is not read again, and leaves one MLflow run
    assert output(executing).count("not run again, the previous attempt stopped on bad input") == 2
    ingest_runs = [r for r in store_client(uri).search_runs([runs["ingest"].info.experiment_id])
                   if r.info.run_name == "ingest"]
    assert len(ingest_runs) == 1


def test_failed_validation_registers_nothing_and_keeps_the_champion(champion_workdir, tmp_path, tiny_model_dir):
    workdir, uri = champion_workdir
    frame = review_frame(200)
    frame.loc[:29, "reviewText"] = "  "  # 15% blank texts, above the 5% limit
    data = tmp_path / "blank.csv"
    frame.to_csv(data, index=False)
    run, executing = run_flow("review_flow.py", workdir, data=str(data), model=str(tiny_model_dir),
                              max_length=32)
    assert executing.status == "failed" and executing.returncode != 0
    text = output(executing)
    assert "validation failed; nothing was trained or registered. 1 problem(s):" in text
    assert "observed: 30 of 200 rows (15.0%): blank_text 30" in text
    assert "resume --origin-run-id" not in text  # the data must change: a resume would reuse the same ingest
    assert "split" not in [step.id for step in run]
    assert registry_state(uri) == {"versions": [1], "aliases": {"challenger": 1, "champion": 1}}
    validate = step_runs(uri)["validate"]
    assert validate.info.status == "FAILED" and validate.data.tags["validation"] == "failed"
    assert validate.data.metrics["quarantined_blank_text"] == 30
    client = store_client(uri)
    assert {a.path for a in client.list_artifacts(validate.info.run_id, "validation")} >= {
        "validation/gx_result.json", "validation/data_docs", "validation/quarantine.csv"}
    card = card_components(run["validate"].task, "validation")
    assert markdown(card)[0] == "# Data validation FAILED: the flow stops here"
    assert any(c["type"] == "table" and "problem" in c["columns"] for c in card)
    (gx_json,) = [c for c in card if c["type"] == "jsonViewer"]
    gx_result = json.loads(gx_json["json_string"])
    assert gx_result["success"] is False and len(gx_result["results"]) == 11


def test_fail_on_drift_stops_the_flow_with_the_drifted_features(champion_workdir, tmp_path, tiny_model_dir):
    workdir, uri = champion_workdir
    frame = review_frame(200, seed=9)
    frame["isPositive"] = (frame.index % 10 == 0).astype(int)
    frame["reviewText"] = frame["reviewText"] + " Привет zebra quokka"
    frame.loc[[5, 6], "reviewText"] = ""  # two rows for the quarantine, under the limit
    data = tmp_path / "drifted.csv"
    frame.to_csv(data, index=False)
    run, executing = run_flow("review_flow.py", workdir, data=str(data), model=str(tiny_model_dir),
                              max_length=32, fail_on_drift=True)
    assert executing.status == "failed" and executing.returncode != 0
    text = output(executing)
    assert "data drift against the champion (version 1) in 5 feature(s), PSI >= 0.25:" in text
    assert "- label: PSI" in text and "(--fail-on-drift)" in text
    assert registry_state(uri) == {"versions": [1], "aliases": {"challenger": 1, "champion": 1}}
    validate = step_runs(uri)["validate"]
    assert validate.data.tags["validation"] == "passed" and validate.data.tags["drift_status"] == "drift"
    assert validate.data.metrics["drift_psi_label"] > 0.25 and validate.data.metrics["quarantined_blank_text"] == 2
    client = store_client(uri)
    artifact = client.download_artifacts(validate.info.run_id, "validation/quarantine.csv", str(tmp_path))
    quarantine = pd.read_csv(artifact)
    assert quarantine[["source_row", "reason"]].values.tolist() == [[6, "blank_text"], [7, "blank_text"]]
    card = card_components(run["validate"].task, "validation")
    assert markdown(card)[0].startswith("# Data validation passed, but the data drifted: the flow stops here")
    drift_table = next(c for c in card if c["type"] == "table" and "PSI" in c["columns"])
    assert {row[0] for row in drift_table["data"]} == {"label", "text_chars", "token_length", "charset", "vocabulary"}
