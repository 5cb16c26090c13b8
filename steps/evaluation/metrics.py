"""Metrics of a binary classifier from its positive-class probabilities: the scores, calibration, slices, the most
confident errors, and a paired comparison of two models on the same rows (McNemar's exact test).

Everything is computed from softmax probabilities of the positive class (never logits), with scikit-learn and
scipy; the threshold is 0.5 unless given.
"""
from __future__ import annotations


def classification_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC, log-loss, ECE and the confusion matrix, for binary labels."""
    import numpy as np
    from sklearn import metrics

    labels = np.asarray(labels).astype(int)
    probs = np.clip(np.asarray(probs, dtype=float), 1e-7, 1 - 1e-7)
    predicted = (probs >= threshold).astype(int)
    out = {
        "accuracy": metrics.accuracy_score(labels, predicted),
        "precision": metrics.precision_score(labels, predicted, zero_division=0),
        "recall": metrics.recall_score(labels, predicted, zero_division=0),
        "f1": metrics.f1_score(labels, predicted, zero_division=0),
        "log_loss": metrics.log_loss(labels, probs, labels=[0, 1]),
        "rows": int(len(labels)),
        "positive_share": float(labels.mean()) if len(labels) else 0.0,
    }
    out["roc_auc"] = metrics.roc_auc_score(labels, probs) if len(set(labels)) == 2 else float("nan")
    out["ece"] = expected_calibration_error(labels, probs)
    tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    out.update({"true_negatives": int(tn), "false_positives": int(fp),
                "false_negatives": int(fn), "true_positives": int(tp)})
    out.update(confidence_intervals(int(tn), int(fp), int(fn), int(tp)))
    return {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in out.items()}


CI_RESAMPLES = 2000  # draws of the confusion matrix's cell shares for F1's interval
CI_SEED = 0


def confidence_intervals(tn: int, fp: int, fn: int, tp: int) -> dict:
    """95% intervals of accuracy (Wilson score) and of positive-class F1 (its cell shares drawn 2,000 times from a
    Dirichlet around the confusion matrix's own, seeded, so the same predictions give the same interval).
    They say how far the figure could move on another test set of this size: few test rows, wide; many, narrow."""
    import math

    import numpy as np

    n = tn + fp + fn + tp
    if n == 0:
        return {}
    z, share = 1.959964, (tn + tp) / n
    centre, spread = share + z * z / (2 * n), z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    # F1 of cell shares drawn from Dirichlet(counts + 1/2) (Jeffreys): what the confusion matrix's shares could be,
    # given these counts. An empty cell (no false positives, a model that never predicts positive) may fill on
    # another test set, so the interval does not shrink to a point as a plain bootstrap of the counts would.
    shares = np.random.default_rng(CI_SEED).dirichlet(np.array([tn, fp, fn, tp], dtype=float) + 0.5,
                                                      size=CI_RESAMPLES)
    f1 = 2 * shares[:, 3] / (2 * shares[:, 3] + shares[:, 1] + shares[:, 2])
    point = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0  # at 0 or 1 the draws sit just inside it
    return {"accuracy_ci95_low": max(0.0, (centre - spread) / (1 + z * z / n)),
            "accuracy_ci95_high": min(1.0, (centre + spread) / (1 + z * z / n)),
            "f1_ci95_low": min(point, float(np.percentile(f1, 2.5))),
            "f1_ci95_high": max(point, float(np.percentile(f1, 97.5)))}


def interval_line(test_metrics: dict) -> str | None:
    """`95% CI: accuracy 0.8179-0.8706, F1 ... (721 test rows; wide: ...)`, or None without intervals; "wide" where
    an interval spans more than ±1 point (few rows, or a figure far from 0 and 1)."""
    if "accuracy_ci95_low" not in test_metrics:
        return None
    width = max(test_metrics["accuracy_ci95_high"] - test_metrics["accuracy_ci95_low"],
                test_metrics["f1_ci95_high"] - test_metrics["f1_ci95_low"]) / 2
    how = (f"wide: each figure could move ±{width * 100:.1f} points on another test set of this size"
           if width > 0.01 else f"narrow: ±{width * 100:.2f} points")
    return (f"95% CI: accuracy {test_metrics['accuracy_ci95_low']:.4f}-{test_metrics['accuracy_ci95_high']:.4f}, "
            f"F1 {test_metrics['f1_ci95_low']:.4f}-{test_metrics['f1_ci95_high']:.4f} "
            f"({test_metrics['rows']} test rows; {how})")


# --- calibration -------------------------------------------------------------------------------------------
CALIBRATION_BINS = 10


def calibration_bins(labels, probs, n_bins: int = CALIBRATION_BINS) -> dict:
    """The reliability diagram's bins, cut exactly as sklearn's calibration_curve(strategy="uniform") cuts them.

    `n_bins` equal-width bins over the POSITIVE-class probability; a probability on an inner edge belongs to
    the bin below it ([0, 0.1], (0.1, 0.2], ..., (0.9, 1]). Empty bins are left out. Returns lists, lowest bin
    first: mean_probability (mean p in the bin), positive_rate (share of label 1), rows.
    """
    import numpy as np
    from sklearn.calibration import calibration_curve

    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    positive_rate, mean_probability = calibration_curve(labels, probs, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = np.bincount(np.searchsorted(edges[1:-1], probs), minlength=n_bins)  # calibration_curve's rule
    return {"mean_probability": mean_probability.tolist(), "positive_rate": positive_rate.tolist(),
            "rows": rows[rows > 0].tolist()}


def expected_calibration_error(labels, probs, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE = sum over the bins of (rows in bin / rows) * |positive rate - mean probability|; 0 is perfect.

    The binary reliability-diagram ECE over the positive-class probability, on the bins of
    `calibration_bins` (10 equal-width bins). Not the top-label variant, which bins max(p, 1 - p).
    """
    import numpy as np

    if not len(labels):
        return float("nan")
    bins = calibration_bins(labels, probs, n_bins)
    weights = np.asarray(bins["rows"], dtype=float) / len(labels)
    gaps = np.abs(np.asarray(bins["positive_rate"]) - np.asarray(bins["mean_probability"]))
    return float((weights * gaps).sum())


# --- slices ------------------------------------------------------------------------------------------------
TOKEN_LENGTH_EDGES = (16, 32, 64, 128)  # upper bounds of the length buckets, in tokens (specials included)


def length_bucket(tokens: int, edges=TOKEN_LENGTH_EDGES) -> str:
    """'1-16', '17-32', ... or 'over-128' for a review of `tokens` tokens."""
    lower = 1
    for upper in edges:
        if tokens <= upper:
            return f"{lower}-{upper}"
        lower = upper + 1
    return f"over-{edges[-1]}"


def slice_accuracy(labels, probs, token_lengths, verified=None, threshold: float = 0.5) -> list[dict]:
    """Accuracy per slice of the test rows: by token-length bucket and, when given, by `verified`.

    One dict per non-empty slice, buckets in order: {"slice", "bucket", "rows", "positive_share", "accuracy"}.
    """
    import numpy as np
    import pandas as pd
    from sklearn.metrics import accuracy_score

    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probs, dtype=float) >= threshold).astype(int)
    bucket_order = [length_bucket(e) for e in TOKEN_LENGTH_EDGES] + [f"over-{TOKEN_LENGTH_EDGES[-1]}"]
    slices = {"tokens": (np.array([length_bucket(int(n)) for n in token_lengths], dtype=object), bucket_order)}
    if verified is not None:
        flags = pd.Series(verified).astype("boolean")
        if flags.notna().any():
            names = flags.map({True: "true", False: "false"}).astype(object).fillna("unknown").to_numpy()
            slices["verified"] = (names, ["true", "false", "unknown"])
    out = []
    for name, (buckets, order) in slices.items():
        for bucket in order:
            mask = buckets == bucket
            if mask.any():
                out.append({"slice": name, "bucket": bucket, "rows": int(mask.sum()),
                            "positive_share": round(float(labels[mask].mean()), 4),
                            "accuracy": round(float(accuracy_score(labels[mask], predicted[mask])), 6)})
    return out


def slice_metrics(slices: list[dict], prefix: str = "test_accuracy") -> dict:
    """Slices as flat MLflow metric names, e.g. test_accuracy.tokens.17-32."""
    return {f"{prefix}.{s['slice']}.{s['bucket']}": s["accuracy"] for s in slices}


# --- errors ------------------------------------------------------------------------------------------------
CONFIDENT_ERRORS = 10


def most_confident_errors(texts, labels, probs, n: int = CONFIDENT_ERRORS, threshold: float = 0.5) -> list[dict]:
    """The `n` wrongly classified test reviews the model was most sure of, most confident first.

    Confidence is the probability the model gave its (wrong) prediction: p for a predicted positive, 1 - p for
    a predicted negative. These are the rows to read first: label noise, sarcasm, negation, domain words.
    Each: {"row" (position in the test split), "text", "label", "predicted", "probability_positive", "confidence"}.
    """
    import numpy as np

    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    predicted = (probs >= threshold).astype(int)
    confidence = np.where(predicted == 1, probs, 1 - probs)
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]
    texts = list(texts)
    return [{"row": int(i), "text": str(texts[i]), "label": int(labels[i]), "predicted": int(predicted[i]),
             "probability_positive": round(float(probs[i]), 4), "confidence": round(float(confidence[i]), 4)}
            for i in order]


# --- champion vs challenger --------------------------------------------------------------------------------
COMPARED = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")


def mcnemar_exact(labels, challenger_predicted, champion_predicted) -> dict:
    """McNemar's exact test on paired predictions of the same rows.

    Only discordant rows carry evidence: b = challenger right and champion wrong, c = the reverse. Under "both
    are equally accurate" b ~ Binomial(b + c, 1/2); the p-value is scipy's exact two-sided binomial test
    (no chi-square approximation, so small b + c is fine). p = 1 when the models never disagree.
    """
    import numpy as np
    from scipy.stats import binomtest

    labels = np.asarray(labels).astype(int)
    challenger_right = np.asarray(challenger_predicted).astype(int) == labels
    champion_right = np.asarray(champion_predicted).astype(int) == labels
    b = int((challenger_right & ~champion_right).sum())
    c = int((~challenger_right & champion_right).sum())
    p_value = float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue) if b + c else 1.0
    return {"challenger_only_right": b, "champion_only_right": c, "p_value": p_value,
            "method": "McNemar exact (two-sided binomial test on discordant pairs)"}


def compare_with_champion(labels, challenger_probs, champion_probs, champion_version: int,
                          threshold: float = 0.5) -> dict:
    """Both models' metrics on the same rows, challenger - champion deltas, and McNemar's test."""
    import numpy as np

    challenger = classification_metrics(labels, challenger_probs, threshold)
    champion = classification_metrics(labels, champion_probs, threshold)
    return {
        "champion_version": int(champion_version),
        "champion": champion,
        "delta": {k: round(challenger[k] - champion[k], 6) for k in COMPARED},
        "mcnemar": mcnemar_exact(labels, np.asarray(challenger_probs) >= threshold,
                                 np.asarray(champion_probs) >= threshold),
    }


def comparison_metrics(comparison: dict) -> dict:
    """The comparison as flat MLflow metrics: champion_test_*, delta_test_*, mcnemar_p_value."""
    out = {f"champion_test_{k}": comparison["champion"][k] for k in COMPARED}
    out.update({f"delta_test_{k}": v for k, v in comparison["delta"].items()})
    out["mcnemar_p_value"] = comparison["mcnemar"]["p_value"]
    out["champion_version"] = comparison["champion_version"]
    return out
