"""The promotion gate, on both sides of every threshold (a worse challenger must never pass)."""
import math

import pytest

from steps.evaluation.gate import GateVerdict, judge, judge_evaluation, with_baseline
from steps.runtime.errors import ReviewflowError


def test_first_model_needs_only_the_floor():
    assert judge(0.80, min_f1=0.75).passed
    assert judge(0.75, min_f1=0.75).passed  # the floor is inclusive
    below = judge(0.7499, min_f1=0.75)
    assert not below.passed and below.reasons[0] == "F1 0.7499 < floor 0.75"
    assert "no champion to compare with" in below.reasons


def test_a_worse_challenger_fails_even_above_the_floor():
    verdict = judge(0.90, min_f1=0.75, max_regression=0.0, champion_f1=0.95, champion_version=3)
    assert not verdict.passed
    assert verdict.f1_delta == pytest.approx(-0.05)
    assert verdict.reasons[1] == "F1 -0.0500 vs champion v3 (0.9500): exceeds the allowed regression 0"
    tags = verdict.tags()
    assert tags["gate"] == "failed" and tags["gate.champion_version"] == "3"
    assert tags["gate.f1_delta"] == "-0.050000" and "exceeds" in tags["gate.reasons"]


def test_a_better_or_equal_challenger_passes():
    better = judge(0.95, champion_f1=0.90, champion_version=3)
    equal = judge(0.90, champion_f1=0.90, champion_version=3)
    assert better.passed and better.f1_delta == pytest.approx(0.05)
    assert equal.passed and equal.tags()["gate"] == "passed"


def test_max_regression_allows_exactly_that_much_worse():
    assert judge(0.88, max_regression=0.02, champion_f1=0.90, champion_version=1).passed
    assert not judge(0.8799, max_regression=0.02, champion_f1=0.90, champion_version=1).passed


def test_both_rules_must_hold():
    # better than a weak champion but under the floor: not promoted
    verdict = judge(0.70, min_f1=0.75, champion_f1=0.60, champion_version=2)
    assert not verdict.passed and verdict.f1_delta == pytest.approx(0.10)


def test_an_unscorable_champion_or_candidate_fails_the_gate():
    assert not judge(0.99, champion_f1=None, champion_version=4).passed
    nan = judge(float("nan"))
    assert not nan.passed and math.isnan(nan.candidate_f1)


@pytest.mark.parametrize("min_f1, max_regression", [(1.5, 0.0), (-0.1, 0.0), (0.7, -0.01), (0.7, 2.0)])
def test_nonsense_thresholds_are_refused(min_f1, max_regression):
    with pytest.raises(ReviewflowError, match="--min-f1|--max-regression"):
        judge(0.8, min_f1=min_f1, max_regression=max_regression)


def test_verdict_from_an_evaluation_uses_the_champion_scored_on_the_same_rows():
    comparison = {"champion_version": 5, "champion": {"f1": 0.91},
                  "mcnemar": {"p_value": 0.0123}}
    verdict = judge_evaluation({"f1": 0.89, "rows": 700}, 5, comparison, 0.75, 0.0)
    assert not verdict.passed and verdict.champion_f1 == 0.91
    assert verdict.tags()["gate.mcnemar_p_value"] == "0.0123" and verdict.tags()["gate.test_rows"] == "700"
    roundtrip = GateVerdict(**verdict.as_dict())
    assert roundtrip == verdict


def one_class_metrics(rows=623, positives=375):
    """Test metrics of a model that says "positive" for every review (F1 from the class balance alone)."""
    precision = positives / rows
    return {"f1": 2 * precision / (1 + precision), "rows": rows, "true_positives": positives,
            "false_positives": rows - positives, "true_negatives": 0, "false_negatives": 0}


@pytest.mark.parametrize("min_f1, max_regression", [(0.0, 1.0), (0.75, 0.0)])
def test_a_model_that_predicts_one_class_never_passes(min_f1, max_regression):
    metrics = one_class_metrics()
    assert metrics["f1"] == pytest.approx(0.7515, abs=1e-4)  # above the default floor by itself
    verdict = judge_evaluation(metrics, None, None, min_f1, max_regression)
    assert not verdict.passed and verdict.tags()["gate.one_class"] == "true"
    assert verdict.reasons[-1].startswith("predicts positive for all 623 test reviews")
    assert not with_baseline(verdict, 0.5, ignore_baseline=True).passed  # no option lets it through
    negative = {**metrics, "f1": 0.0, "true_positives": 0, "false_positives": 0, "true_negatives": 248,
                "false_negatives": 375}
    assert "predicts negative for all" in judge_evaluation(negative, None, None, 0.0, 1.0).reasons[-1]
    mixed = {**metrics, "true_positives": 374, "false_negatives": 1}
    assert judge_evaluation(mixed, None, None, 0.0, 1.0).passed


def test_the_f1_must_be_above_the_baselines_unless_ignored():
    passed = judge(0.85)
    above = with_baseline(passed, 0.80)
    assert above.passed and above.reasons[-1] == "F1 0.8500 > TF-IDF baseline 0.8000"
    assert above.tags()["gate.baseline_f1"] == "0.800000" and above.tags()["gate.ignore_baseline"] == "false"
    for baseline_f1 in (0.85, 0.90):  # equal is not above
        below = with_baseline(passed, baseline_f1)
        assert not below.passed and "<= TF-IDF baseline" in below.reasons[-1]
        ignored = with_baseline(passed, baseline_f1, ignore_baseline=True)
        assert ignored.passed and ignored.reasons[-1].endswith("(not required: --ignore-baseline)")
    assert not with_baseline(passed, None).passed  # an unscored baseline proves nothing
    assert with_baseline(passed, None, ignore_baseline=True).passed
    assert not with_baseline(judge(0.70), 0.60).passed  # the other rules still hold
    roundtrip = GateVerdict(**above.as_dict())
    assert roundtrip == above
