"""Train: fine-tune a sequence classifier on tokenized reviews.

The engine: length-bucketed batches with dynamic padding, AdamW with linear warmup and decay, gradient
clipping, bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing), fp32 on CPU, per-epoch
validation and the best epoch's weights restored at the end. The same code runs on CPU and CUDA.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from steps.batching import bucketed_batches, collate, sorted_batches
from steps.errors import ReviewflowError


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    patience: int = 2
    device: str = "auto"  # "auto" = CUDA when present, else CPU

    def validate(self) -> None:
        if self.epochs < 1:
            raise ReviewflowError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ReviewflowError(f"--batch-size must be at least 1, got {self.batch_size}")
        if not 0 < self.learning_rate < 1:
            raise ReviewflowError(f"--learning-rate must be in (0, 1), got {self.learning_rate}")

    def as_params(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    device: str
    precision: str
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    real_tokens_per_s: float = 0.0

    def summary(self) -> dict:
        best = self.history[self.best_epoch - 1] if self.history else {}
        return {
            "device": self.device,
            "precision": self.precision,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "steps": self.steps,
            "train_seconds": round(self.train_seconds, 2),
            "samples_per_s": round(self.samples_per_s, 2),
            "real_tokens_per_s": round(self.real_tokens_per_s, 1),
            **{f"best_{k}": v for k, v in best.items() if k.startswith("val_")},
        }


def pick_device(requested: str = "auto"):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast_dtype(device):
    """bf16 on CUDA where supported, else fp16; None (fp32) on CPU."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    """LR rises linearly from 0 over warmup_steps, then falls linearly to 0 at total_steps."""
    import torch

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimizer(model, config: TrainConfig):
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def evaluate_loss(model, tokens, batch_size: int, device, dtype=None) -> dict:
    """Mean cross-entropy and accuracy of `model` on `tokens`."""
    import torch

    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    with torch.inference_mode():
        for rows in sorted_batches(tokens.lengths, batch_size * 2):
            ids, mask, labels = collate(tokens, rows, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            total_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(rows)
    return {"val_loss": total_loss / max(seen, 1), "val_accuracy": correct / max(seen, 1)}


def train_classifier(
    model,
    train_tokens,
    val_tokens,
    config: TrainConfig,
    on_step: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune `model` in place; returns the per-epoch history. The best epoch's weights are kept."""
    import copy

    import torch

    config.validate()
    seed_everything(config.seed)
    device = pick_device(config.device)
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    model.to(device)

    batches_per_epoch = math.ceil(len(train_tokens) / config.batch_size)
    total_steps = batches_per_epoch * config.epochs
    optimizer = _optimizer(model, config)
    scheduler = linear_warmup_decay(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    result = TrainResult(device=str(device), precision=precision)
    log(f"training on {device} ({precision}): {len(train_tokens)} reviews, {config.epochs} epoch(s), "
        f"batch {config.batch_size}, {total_steps} steps")

    best_loss, best_state, stale = math.inf, None, 0
    lengths = train_tokens.lengths
    started = time.perf_counter()
    samples = tokens_seen = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_loss, epoch_started = 0.0, time.perf_counter()
        batches = bucketed_batches(lengths, config.batch_size, seed=config.seed + epoch)
        for rows in batches:
            ids, mask, labels = collate(train_tokens, rows, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            result.steps += 1
            samples += len(rows)
            tokens_seen += int(lengths[rows].sum())
            epoch_loss += loss.item() * len(rows)
            if on_step:
                on_step(result.steps, {"train_loss": loss.item(), "learning_rate": scheduler.get_last_lr()[0]})
        metrics = {"epoch": epoch, "train_loss": epoch_loss / len(train_tokens)}
        metrics.update(evaluate_loss(model, val_tokens, config.batch_size, device, dtype))
        metrics["epoch_seconds"] = round(time.perf_counter() - epoch_started, 2)
        result.history.append(metrics)
        log(f"epoch {epoch}/{config.epochs}: train_loss {metrics['train_loss']:.4f}  "
            f"val_loss {metrics['val_loss']:.4f}  val_accuracy {metrics['val_accuracy']:.4f}  "
            f"({metrics['epoch_seconds']:.0f} s)")
        if metrics["val_loss"] < best_loss:
            best_loss, stale, result.best_epoch = metrics["val_loss"], 0, epoch
            best_state = copy.deepcopy({k: v.detach().to("cpu") for k, v in model.state_dict().items()})
        else:
            stale += 1
            if stale >= config.patience:
                log(f"early stopping: val_loss has not improved for {stale} epoch(s)")
                break
    elapsed = time.perf_counter() - started
    result.train_seconds = elapsed
    result.samples_per_s = samples / elapsed if elapsed else 0.0
    result.real_tokens_per_s = tokens_seen / elapsed if elapsed else 0.0
    if best_state is not None and result.best_epoch != len(result.history):
        log(f"restoring the weights of epoch {result.best_epoch} (lowest val_loss {best_loss:.4f})")
        model.load_state_dict(best_state)
    model.to("cpu")
    return result
