import numpy as np
import pytest

from steps.evaluation.evaluate import predict_proba
from steps.evaluation.metrics import classification_metrics
from steps.training.models import load_classifier
from steps.training.tokenize import encode


def test_metrics_on_a_hand_checked_example():
    labels = [1, 1, 1, 0, 0]
    probs = [0.9, 0.6, 0.4, 0.3, 0.7]  # predictions 1 1 0 0 1: TP 2, FN 1, TN 1, FP 1
    m = classification_metrics(labels, probs)
    assert (m["true_positives"], m["false_negatives"], m["true_negatives"], m["false_positives"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(4 / 6)  # 4 of 6 positive/negative pairs ranked right
    expected_loss = -np.mean(np.log([0.9, 0.6, 0.4, 0.7, 0.3]))
    assert m["log_loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_the_95_percent_intervals_cover_the_figures_and_narrow_with_more_rows():
    from steps.evaluation.metrics import confidence_intervals, interval_line

    m = classification_metrics([1, 1, 1, 0, 0], [0.9, 0.6, 0.4, 0.3, 0.7])
    # Wilson's interval for 3 of 5, by hand: 0.2307 to 0.8824
    assert (m["accuracy_ci95_low"], m["accuracy_ci95_high"]) == (pytest.approx(0.2307, abs=1e-4),
                                                                pytest.approx(0.8824, abs=1e-4))
    perfect, never_positive = confidence_intervals(0, 0, 0, 20), confidence_intervals(10, 10, 0, 0)
    assert perfect["accuracy_ci95_high"] == 1.0 and perfect["f1_ci95_high"] == 1.0 > perfect["f1_ci95_low"] > 0.8
    assert never_positive["f1_ci95_low"] == 0.0 < never_positive["f1_ci95_high"]  # empty cells: still an interval
    few, many = confidence_intervals(300, 60, 40, 321), confidence_intervals(300_000, 60_000, 40_000, 321_000)
    assert few == confidence_intervals(300, 60, 40, 321)  # seeded: the same predictions, the same interval
    for ci in (few, many):
        assert ci["accuracy_ci95_low"] < 621 / 721 < ci["accuracy_ci95_high"]
        assert ci["f1_ci95_low"] < 642 / 742 < ci["f1_ci95_high"]
    assert many["accuracy_ci95_high"] - many["accuracy_ci95_low"] < (few["accuracy_ci95_high"]
                                                                      - few["accuracy_ci95_low"]) / 10
    assert "(721 test rows; wide: each figure could move ±" in interval_line({**few, "rows": 721})
    assert "(721000 test rows; narrow: ±0." in interval_line({**many, "rows": 721_000})
    assert confidence_intervals(0, 0, 0, 0) == {} and interval_line({"rows": 0}) is None


def test_probabilities_are_softmax_in_row_order(tiny_model_dir, tiny_tokenizer):
    import torch

    model = load_classifier(str(tiny_model_dir))
    texts = ["great phone", "the battery was very poor and the screen was junk", "love it"]
    tokens = encode(texts, [1, 0, 1], tiny_tokenizer, max_length=32)
    probs = predict_proba(model, tokens, batch_size=2)
    assert probs.shape == (3,) and ((probs > 0) & (probs < 1)).all()
    with torch.inference_mode():
        batch = tiny_tokenizer(texts[1], return_tensors="pt", return_token_type_ids=False)
        expected = torch.softmax(model(**batch).logits, -1)[0, 1].item()
    assert probs[1] == pytest.approx(expected, abs=1e-5)


def test_expected_calibration_error_by_hand_and_on_calibration_curves_bins():
    from steps.evaluation.metrics import calibration_bins, expected_calibration_error

    # one review per bin, each off by its distance to the label: (0.05 + 0.15 + 0.15 + 0.05) / 4
    assert expected_calibration_error([0, 0, 1, 1], [0.05, 0.15, 0.85, 0.95]) == pytest.approx(0.10)
    # an inner edge belongs to the bin below (as in sklearn's calibration_curve): 0.1 and 0.1 share bin [0, 0.1]
    bins = calibration_bins([0, 1, 1], [0.1, 0.1, 0.2])
    assert bins["rows"] == [2, 1] and bins["positive_rate"] == [0.5, 1.0]
    assert expected_calibration_error([0, 1, 1], [0.1, 0.1, 0.2]) == pytest.approx((2 * 0.4 + 1 * 0.8) / 3)


def test_expected_calibration_error_matches_a_direct_count_over_the_bins():
    from steps.evaluation.metrics import expected_calibration_error

    rng = np.random.default_rng(7)
    probs = np.round(rng.random(500), 2)  # many values exactly on bin edges
    labels = (rng.random(500) < probs).astype(int)
    edges = np.linspace(0, 1, 11)
    expected = 0.0
    for i in range(10):
        lower = probs >= edges[i] if i == 0 else probs > edges[i]
        in_bin = lower & (probs <= edges[i + 1])
        if in_bin.any():
            expected += in_bin.mean() * abs(labels[in_bin].mean() - probs[in_bin].mean())
    assert expected_calibration_error(labels, probs) == pytest.approx(expected)
    assert classification_metrics(labels, probs)["ece"] == pytest.approx(expected, abs=1e-6)


def test_accuracy_per_length_bucket_and_verified_flag():
    from steps.evaluation.metrics import length_bucket, slice_accuracy

    assert [length_bucket(n) for n in (1, 16, 17, 128, 129)] == ["1-16", "1-16", "17-32", "65-128", "over-128"]
    labels = [1, 0, 1, 1, 0]
    probs = [0.9, 0.8, 0.7, 0.2, 0.1]  # right, wrong, right, wrong, right
    slices = slice_accuracy(labels, probs, [3, 16, 17, 40, 200], verified=[True, False, None, True, False])
    got = {(s["slice"], s["bucket"]): (s["rows"], s["accuracy"]) for s in slices}
    assert got == {("tokens", "1-16"): (2, 0.5), ("tokens", "17-32"): (1, 1.0), ("tokens", "33-64"): (1, 0.0),
                   ("tokens", "over-128"): (1, 1.0), ("verified", "true"): (2, 0.5),
                   ("verified", "false"): (2, 0.5), ("verified", "unknown"): (1, 1.0)}
    assert [s["bucket"] for s in slices if s["slice"] == "tokens"] == ["1-16", "17-32", "33-64", "over-128"]
    assert all(s["slice"] == "tokens" for s in slice_accuracy(labels, probs, [3] * 5))  # no verified column


def test_mcnemar_exact_test_on_discordant_pairs():
    from steps.evaluation.metrics import compare_with_champion, mcnemar_exact

    labels = np.ones(20, dtype=int)
    challenger = np.array([1] * 18 + [0] * 2)
    champion = np.array([1] * 10 + [0] * 8 + [1] * 2)  # challenger alone right on 8 rows, champion alone on 2
    result = mcnemar_exact(labels, challenger, champion)
    assert (result["challenger_only_right"], result["champion_only_right"]) == (8, 2)
    assert result["p_value"] == pytest.approx(2 * (45 + 10 + 1) / 2 ** 10)  # 2 * P(X >= 8), X ~ Bin(10, 1/2)
    assert mcnemar_exact(labels, challenger, challenger)["p_value"] == 1.0  # never disagree: no evidence
    comparison = compare_with_champion(labels, challenger * 0.8 + 0.1, champion * 0.8 + 0.1, champion_version=4)
    assert comparison["delta"]["accuracy"] == pytest.approx(0.9 - 0.6)
    assert comparison["champion"]["accuracy"] == pytest.approx(0.6) and comparison["champion_version"] == 4


def test_plots_are_png_files_for_each_view():
    from steps.evaluation.plots import evaluation_plots

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 100)
    probs = np.clip(labels * 0.5 + rng.random(100) * 0.5, 0, 1)
    history = [{"epoch": 1, "train_loss": 0.6, "val_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_loss": 0.45}]
    plots = evaluation_plots(labels, probs, history, champion_probs=rng.random(100), champion_version=2)
    assert sorted(plots) == ["confusion_matrix.png", "loss_curves.png", "reliability_diagram.png", "roc_curve.png"]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000 for png in plots.values())
    assert sorted(evaluation_plots(np.ones(10), np.full(10, 0.7))) == ["confusion_matrix.png",
                                                                     "reliability_diagram.png"]  # no ROC for one class


def test_a_champion_that_cannot_be_scored_is_reported_not_fatal(tiny_model_dir, tiny_tokenizer, tracking_uri):
    import pandas as pd

    from steps.evaluation.evaluate import evaluate_predictions, predict_proba
    from steps.evaluation.gate import judge_evaluation

    texts = ["great phone", "terrible junk", "love it", "broken and useless"]
    tokens = encode(texts, [1, 0, 1, 0], tiny_tokenizer, max_length=32)
    rows = pd.DataFrame({"reviewText": texts, "isPositive": [1, 0, 1, 0]})
    probs = predict_proba(load_classifier(str(tiny_model_dir)), tokens)
    evaluation = evaluate_predictions(tokens.labels, probs, tokens.lengths, rows, history=None,
                                      champion_uri="models:/review-classifier/1", champion_version=1)
    assert evaluation.comparison is None and "review-classifier" in evaluation.champion_error
    assert evaluation.metrics["rows"] == 4 and "loss_curves.png" not in evaluation.plots
    verdict = judge_evaluation(evaluation.metrics, 1, None, min_f1=0.0)
    assert not verdict.passed and "could not be scored" in verdict.tags()["gate.reasons"]
