"""Evaluate: score the test split and compute metrics on softmax probabilities."""
from __future__ import annotations

from steps.batching import collate, sorted_batches


def predict_proba(model, tokens, batch_size: int = 64, device=None):
    """Positive-class probability for every row of `tokens`, in row order."""
    import numpy as np
    import torch

    from steps.train import autocast_dtype, pick_device

    device = device or pick_device()
    dtype = autocast_dtype(device)
    model.to(device).eval()
    probs = np.zeros(len(tokens), dtype=np.float64)
    with torch.inference_mode():
        for rows in sorted_batches(tokens.lengths, batch_size):
            ids, mask, _ = collate(tokens, rows, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            probs[rows] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
    return probs


def classification_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall, F1, ROC-AUC and log-loss (scikit-learn) for binary labels."""
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
    tn, fp, fn, tp = metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    out.update({"true_negatives": int(tn), "false_positives": int(fp),
                "false_negatives": int(fn), "true_positives": int(tp)})
    return {k: (round(float(v), 6) if isinstance(v, float) else v) for k, v in out.items()}
