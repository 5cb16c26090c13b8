"""Per-epoch validation: the loss, accuracy and F1 of the model on the validation rows, and how epochs rank
(the best epoch's weights are the ones kept)."""
from __future__ import annotations

import math

from steps.training.batching import collate, sorted_batches
from steps.training.device import free_memory, is_out_of_memory


def epoch_score(metrics: dict, best_epoch_by: str) -> list:
    """An epoch's score (its history entry), lower is better, compared as a list: "f1" ranks by validation F1 and
    breaks ties with the lower loss (on a few hundred validation rows two epochs often tie on F1); "loss" ranks by
    validation loss alone, and so does "f1" for a model with more than two labels (no val_f1: no positive class to
    score). A NaN loss ranks last. Without validation rows the last epoch is the best."""
    if "val_loss" not in metrics:
        return [-metrics["epoch"]]
    loss = metrics["val_loss"] if math.isfinite(metrics["val_loss"]) else math.inf
    if best_epoch_by == "f1" and "val_f1" in metrics:
        return [-metrics["val_f1"], loss]
    return [loss]


def evaluate_loss(model, tokens, batch_size: int, device, dtype=None, class_weights=None,
                  progress: dict | None = None) -> dict:
    """Mean cross-entropy (class-weighted when weights are given), accuracy and, for two labels, the positive
    class's F1 of `model` on `tokens`. `progress`: Progress's log and mode, for validation sets that take minutes
    (100,000 rows of a million-row table); None: silent.

    On CUDA out-of-memory the evaluation starts over with half the batch.
    """
    while True:
        try:
            return _evaluate_loss(model, tokens, batch_size, device, dtype, class_weights, progress)
        except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_out_of_memory(err) or batch_size == 1:
                raise
        batch_size //= 2
        free_memory(device)


def _evaluate_loss(model, tokens, batch_size, device, dtype, class_weights, progress) -> dict:
    import torch

    from steps.runtime.progress import Progress

    model.eval()
    weight = torch.tensor(class_weights, device=device) if class_weights else None
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    total_weight = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    counts = torch.zeros(3, device=device, dtype=torch.int64)  # true positives, predicted positives, positives
    shown = Progress("validation", len(tokens), "reviews", **progress) if progress else None
    with torch.inference_mode():
        for rows in sorted_batches(tokens.lengths, batch_size):
            ids, mask, labels = collate(tokens, rows, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            total_loss += torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="sum")
            total_weight += weight[labels].sum() if weight is not None else len(rows)
            predicted = logits.argmax(-1)
            correct += (predicted == labels).sum()
            counts += torch.stack([((predicted == 1) & (labels == 1)).sum(), (predicted == 1).sum(),
                                   (labels == 1).sum()])
            if shown is not None:
                shown.update(len(rows))
    if shown is not None:
        shown.close()
    seen = max(len(tokens), 1)
    figures = {"val_loss": (total_loss / total_weight.clamp(min=1e-12)).item(), "val_accuracy": correct.item() / seen}
    if int(getattr(model.config, "num_labels", 2)) == 2:
        # F1 of the positive class (label 1), as the gate computes it; 0 where there is nothing to find or nothing
        # found
        true_positives, predicted_positives, positives = counts.tolist()
        figures["val_f1"] = (2 * true_positives / (predicted_positives + positives)
                             if predicted_positives + positives else 0.0)
    return figures
