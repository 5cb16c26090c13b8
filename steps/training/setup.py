"""What a training job is built from besides the model and data: optimizer, learning-rate schedule, class weights,
which parameters train."""
from __future__ import annotations

from steps.runtime.errors import ReviewflowError


def optimizer(model, config, device):
    """AdamW over the trainable parameters; no weight decay on biases and LayerNorm weights."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (CPU and CUDA): ~4x less optimizer time than foreach.
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=device.type in ("cpu", "cuda"))


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    """LR rises linearly from 0 over warmup_steps, then falls linearly to 0 at total_steps."""
    import torch

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def inverse_frequency_weights(labels, num_labels: int) -> list[float]:
    """Class weights n / (k * n_c): each class contributes equally to the loss (scikit-learn's 'balanced')."""
    import numpy as np

    counts = np.bincount(np.asarray(labels), minlength=num_labels)
    if (counts == 0).any():
        missing = [int(c) for c in np.flatnonzero(counts == 0)]
        raise ReviewflowError(f"--class-weights auto: the training split has no reviews of class(es) {missing}; "
                              "use --class-weights none or add reviews of every class")
    return [round(float(len(labels) / (num_labels * c)), 6) for c in counts]


def freeze_encoder(model) -> None:
    """Train only the classification head: every parameter of the pretrained encoder stops taking gradients."""
    encoder = getattr(model, "base_model", model)
    if encoder is model:
        raise ReviewflowError(f"--freeze-encoder: {type(model).__name__} has no separate encoder to freeze")
    for param in encoder.parameters():
        param.requires_grad_(False)
