import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from steps.evaluation import gate
from steps.lifecycle import registry
from steps.runtime import tracking
from steps.serving import package
from tests.fixtures import served_model_uri


def _register(uri, classifier_dir, metaflow_run, verdict=None, promote_mode="auto"):
    """Register as ReviewFlow's register step does; by default with a verdict for a first model with F1 0.8."""
    parent = tracking.start_flow_run(uri, "ReviewFlow", metaflow_run.split("/")[-1], {})
    with tracking.step_run(uri, parent, "register", f"{metaflow_run}/register/8") as run:
        return registry.register(run.client, "review-classifier", served_model_uri(classifier_dir), metaflow_run,
                                 {"data_fingerprint": "abc123", "test_f1": 0.8},
                                 verdict=verdict or gate.judge(0.8), promote_mode=promote_mode)


def test_first_version_is_tagged_champion_and_challenger_and_predicts(tracking_uri, classifier_dir):
    reg = _register(tracking_uri, classifier_dir, "ReviewFlow/1")
    assert (reg.version, reg.created, reg.aliases) == (1, True, ["challenger", "champion"])
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version("review-classifier", "1")
    assert version.tags["metaflow_run"] == "ReviewFlow/1" and version.tags["data_fingerprint"] == "abc123"
    assert set(client.get_registered_model("review-classifier").aliases) == {"challenger", "champion"}

    model = mlflow.pyfunc.load_model("models:/review-classifier@champion")
    assert model.metadata.signature.inputs.input_names() == ["reviewText"]
    reviews = pd.DataFrame({"reviewText": ["great phone", "terrible junk", ""]})
    out = model.predict(reviews, params={"output": "probabilities"})
    assert list(out.columns) == ["label", "probability_positive"] and len(out) == 3
    assert out["probability_positive"].between(0, 1).all()
    assert (out["label"] == (out["probability_positive"] >= 0.5).astype(int)).all()
    labels = model.predict(reviews)  # by default labels alone, like MLflow's scikit-learn classifiers
    assert isinstance(labels, pd.Series) and labels.tolist() == out["label"].tolist()
    with pytest.raises(Exception, match="reviewText"):
        model.predict(pd.DataFrame({"text": ["no such column"]}))


def test_registration_is_idempotent_per_flow_run_and_champion_stays(tracking_uri, classifier_dir):
    first = _register(tracking_uri, classifier_dir, "ReviewFlow/1")
    again = _register(tracking_uri, classifier_dir, "ReviewFlow/1")  # a retried/resumed register step
    assert (again.version, again.created) == (first.version, False)
    # a second model no better than the first (0.79 < 0.8): registered, not promoted
    second = _register(tracking_uri, classifier_dir, "ReviewFlow/2", gate.judge(0.79, champion_f1=0.8,
                                                                                 champion_version=1))
    assert second.version == 2 and second.aliases == ["challenger"] and second.gate == "failed"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    assert len(client.search_model_versions("name = 'review-classifier'")) == 2
    assert int(client.get_model_version_by_alias("review-classifier", "champion").version) == 1
    assert int(client.get_model_version_by_alias("review-classifier", "challenger").version) == 2


def test_pip_requirements_pin_runtime_packages_without_local_tags():
    pins = package.pip_requirements()
    assert any(p.startswith("torch==") for p in pins) and all("+" not in p for p in pins)
    assert not any(p.startswith("torchvision") for p in pins)
