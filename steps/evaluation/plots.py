"""Plots people look at in cards and MLflow: PNG bytes drawn with matplotlib's Agg renderer (no pyplot, no GUI).

Sized for a laptop screen (about 650 to 800 pixels wide at 100 dpi), labelled axes and titles, a faint grid,
no top/right frame: nothing on the figure that does not carry information.
"""
from __future__ import annotations

DPI = 100
SINGLE = (6.4, 4.2)  # inches: one plot
WIDE = (8.0, 3.6)  # two plots side by side
TALL = (8.0, 5.2)  # two plots stacked, sharing the x axis


def figure(size=SINGLE, rows: int = 1, cols: int = 1, sharex: bool = False):
    """A matplotlib Figure (no pyplot: no global state) and its axes (one, or a flat list)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, sharex=sharex, squeeze=False).ravel().tolist()
    for ax in axes:
        tidy(ax)
    return fig, (axes[0] if len(axes) == 1 else axes)


def tidy(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)


def png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def moving_average(values, window: int):
    """Trailing mean over up to `window` points (shorter at the start), as a list."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values.tolist()
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    start = np.maximum(0, idx - window)
    return ((sums[idx] - sums[start]) / (idx - start)).tolist()


def epoch_curves(history: list[dict], resumed_from_epoch: int = 0) -> bytes:
    """Loss (training and validation) and validation accuracy and F1 per epoch, side by side."""
    fig, (loss_ax, acc_ax) = figure(WIDE, 1, 2)
    epochs = [h["epoch"] for h in history]
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training loss")
    if any("val_loss" in h for h in history):
        loss_ax.plot(epochs, [h.get("val_loss") for h in history], marker="o", label="validation loss")
    loss_ax.set_title("Loss per epoch")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy loss")
    loss_ax.legend(frameon=False)
    if any("val_accuracy" in h for h in history):
        acc_ax.plot(epochs, [h.get("val_accuracy") for h in history], marker="o", color="C2", label="accuracy")
        if any("val_f1" in h for h in history):
            acc_ax.plot(epochs, [h.get("val_f1") for h in history], marker="o", color="C3", label="F1")
            acc_ax.legend(frameon=False)
        acc_ax.set_title("Validation accuracy and F1 per epoch")
    else:
        acc_ax.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=acc_ax.transAxes)
        acc_ax.set_title("Validation accuracy")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy, F1")
    for ax in (loss_ax, acc_ax):
        ax.set_xticks(epochs)
        if resumed_from_epoch:
            ax.axvspan(0.5, resumed_from_epoch + 0.5, color="#d9d9d9", alpha=0.5, lw=0,
                       label=f"epochs 1-{resumed_from_epoch}: from a checkpoint")
    if resumed_from_epoch:
        loss_ax.legend(frameon=False)
    return png(fig)


def step_curves(step_history: dict, oom_events: list[dict] = (), resumed_at_step: int = 0) -> bytes:
    """Training loss (each point and a moving average) and the learning rate per optimizer step, stacked.

    Out-of-memory back-offs are marked where they happened; steps taken from a checkpoint are shaded.
    """
    fig, (loss_ax, lr_ax) = figure(TALL, 2, 1, sharex=True)
    steps, losses = step_history["step"], step_history["loss"]
    stride = step_history.get("stride", 1)
    per_point = "" if stride == 1 else f" (each point: mean of {stride} steps)"
    loss_ax.plot(steps, losses, color="C0", alpha=0.35, linewidth=0.9, label="loss" + per_point)
    window = max(5, round(len(steps) / 12)) if len(steps) >= 20 else 1
    if window > 1:
        loss_ax.plot(steps, moving_average(losses, window), color="C0", linewidth=2,
                     label=f"moving average ({window} points)")
    loss_ax.set_title("Training loss per optimizer step")
    loss_ax.set_ylabel("cross-entropy loss")
    lr_ax.plot(steps, step_history["learning_rate"], color="C1")
    lr_ax.set_title("Learning rate (linear warmup, then linear decay)")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for i, event in enumerate(oom_events):
        for ax in (loss_ax, lr_ax):
            ax.axvline(event["step"], color="C3", linestyle="--", linewidth=1,
                       label=f"out of memory: micro-batch {event['from']} -> {event['to']}"
                       if ax is loss_ax and i < 3 else None)
    if resumed_at_step:
        for ax in (loss_ax, lr_ax):
            ax.axvspan(0, resumed_at_step, color="#d9d9d9", alpha=0.5, lw=0,
                       label="from a checkpoint" if ax is loss_ax else None)
    loss_ax.legend(frameon=False, loc="upper right")
    return png(fig)


def training_plots(result) -> dict:
    """PNG bytes by file name for a TrainResult: per-epoch curves and per-step loss + learning rate."""
    plots = {}
    if result.history:
        plots["training_epochs.png"] = epoch_curves(result.history, result.resumed_from_epoch)
    if result.step_history and result.step_history.get("step"):
        plots["training_steps.png"] = step_curves(result.step_history, result.oom_events, result.resumed_at_step)
    return plots


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
