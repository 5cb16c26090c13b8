"""The training plots: per-epoch curves and per-step loss and learning rate, drawn like every plot
(steps/runtime/plots.py)."""
from __future__ import annotations

from steps.runtime.plots import TALL, WIDE, figure, moving_average, png


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
