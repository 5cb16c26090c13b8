"""PromoteFlow's re-check keeps the rules a version was registered under: the TF-IDF baseline's F1 on the same
test rows (from the version's gate tags) unless it was registered with --ignore-baseline, and never a one-class
model."""
import pytest
from mlflow import MlflowClient

from steps.evaluation import gate
from steps.lifecycle import promotion, registry
from steps.runtime import tracking
from steps.training.models import load_classifier, load_tokenizer
from tests.fixtures import served_model_uri

TEXTS = ["great phone", "broken junk", "love it", "awful"]
LABELS = [1, 0, 1, 0]


@pytest.mark.parametrize("ignore", [False, True])
def test_the_recheck_applies_the_baseline_rule_the_version_was_registered_with(tracking_uri, tiny_model_dir,
                                                                              tmp_path, ignore):
    classifier = tmp_path / "classifier"
    load_classifier(str(tiny_model_dir)).save_pretrained(classifier)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(classifier)
    verdict = gate.with_baseline(gate.judge(0.9), 0.95, ignore_baseline=ignore)
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "1", {})
    with tracking.step_run(tracking_uri, parent, "register", "ReviewFlow/1/register/8") as run:
        registry.register(run.client, "review-classifier", served_model_uri(classifier), "ReviewFlow/1", {},
                          verdict=verdict, promote_mode="never")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    rechecked, _ = promotion.check_gate(client, "review-classifier", 1, TEXTS, LABELS, 0.0, 0.0)
    baseline_reason = [r for r in rechecked.reasons if "TF-IDF baseline 0.9500" in r]
    assert len(baseline_reason) == 1
    assert baseline_reason[0].endswith("(not required: --ignore-baseline)") == ignore
    assert rechecked.extra["baseline_f1"] == "0.950000"
    assert not rechecked.passed  # an untrained tiny model is below a 0.95 baseline (or predicts one class)
