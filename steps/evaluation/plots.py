"""The evaluation plots: confusion matrix, ROC curve, reliability diagram, loss curves (steps/runtime/plots.py
draws them all alike)."""
from __future__ import annotations

from steps.runtime.plots import figure, png
from steps.training.plots import epoch_curves


def evaluation_plots(labels, probs, history=None, champion_probs=None, champion_version=None) -> dict:
    """PNG bytes by file name: confusion matrix, ROC curve, reliability diagram and, given a history, loss curves.

    With `champion_probs` the ROC and reliability plots draw the champion (same test rows) beside the challenger.
    """
    import numpy as np
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    from steps.evaluation.metrics import CALIBRATION_BINS, expected_calibration_error

    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=float)
    models = [("this model", probs)]
    if champion_probs is not None:
        models.append((f"champion v{champion_version}", np.asarray(champion_probs, dtype=float)))
    plots = {}

    fig, ax = figure()
    ConfusionMatrixDisplay.from_predictions(labels, (probs >= 0.5).astype(int), labels=[0, 1],
                                            display_labels=["negative", "positive"], ax=ax, colorbar=False,
                                            cmap="Blues")
    ax.grid(False)
    ax.set_title(f"Confusion matrix (test, {len(labels)} reviews, threshold 0.5)")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    plots["confusion_matrix.png"] = png(fig)

    if len(set(labels.tolist())) == 2:
        fig, ax = figure()
        for name, p in models:
            RocCurveDisplay.from_predictions(labels, p, name=name, ax=ax)
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="chance")
        ax.set_title("ROC curve (test)")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right")
        plots["roc_curve.png"] = png(fig)

    fig, ax = figure()
    for name, p in models:
        CalibrationDisplay.from_predictions(labels, p, n_bins=CALIBRATION_BINS, strategy="uniform", ax=ax,
                                            name=f"{name} (ECE {expected_calibration_error(labels, p):.3f})")
    ax.set_title(f"Reliability diagram (test, {CALIBRATION_BINS} equal-width bins)")
    ax.set_xlabel("mean predicted probability of positive")
    ax.set_ylabel("share of positive reviews")
    ax.legend(loc="upper left")
    plots["reliability_diagram.png"] = png(fig)

    if history:
        plots["loss_curves.png"] = epoch_curves(history)
    return plots
