"""Where a training job stands, and what a checkpoint of it holds.

`TrainingState` is the plain part (epoch and step counters, history, early-stopping state, out-of-memory
back-offs, the per-step curve); `checkpoint()` adds the tensors (weights, optimizer, scheduler, grad scaler,
random generators, the best epoch's weights) and `restore()` puts all of it back. The checkpoint holds only
types `torch.load(weights_only=True)` accepts: tensors, numbers, strings, lists and dicts.

A checkpoint carries a `resume_key` of what it can continue: the settings that shape the trajectory, the training
rows and the model's shapes. A job whose key differs starts from scratch instead.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from steps.training.device import rng_state, set_rng_state
from steps.training.history import StepHistory

CHECKPOINT_FORMAT = 3  # 3: best_score (a list, lower is better) replaced best_loss


@dataclass
class TrainingState:
    epoch: int = 0  # epochs finished
    steps: int = 0  # optimizer steps finished
    micro_batch_size: int = 0  # reviews per forward pass now (out-of-memory back-offs halve it)
    samples: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    train_seconds: float = 0.0  # time inside optimizer steps
    history: list[dict] = field(default_factory=list)  # one dict per finished epoch
    best_epoch: int = 0
    best_score: list | None = None  # the best epoch's score, lower is better (Trainer.score); None before any epoch
    stale: int = 0  # epochs since the validation score last improved
    stopped_early: bool = False
    oom_events: list[dict] = field(default_factory=list)  # {"epoch", "step", "from", "to"}
    step_history: StepHistory = field(default_factory=StepHistory)
    best_weights: dict | None = field(default=None, repr=False)  # CPU copy of the best epoch's weights
    resumed_from_epoch: int = 0  # set by restore(): the checkpoint's epoch
    resumed_at_step: int = 0

    PLAIN = ("epoch", "steps", "micro_batch_size", "samples", "real_tokens", "padded_tokens", "train_seconds",
             "history", "best_epoch", "best_score", "stale", "stopped_early", "oom_events")

    def checkpoint(self, resume_key: dict, model, optimizer, scheduler, scaler, device) -> dict:
        """Everything needed to continue after this epoch, as one dict for a CheckpointStore."""
        best_is_current = self.best_epoch == self.epoch
        return {
            "format": CHECKPOINT_FORMAT,
            "resume_key": resume_key,
            "state": {name: getattr(self, name) for name in self.PLAIN},
            "step_history": self.step_history.state(),
            "model": cpu_state_dict(model),
            "best_model": None if best_is_current else self.best_weights,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rng_state(device),
        }

    @classmethod
    def restore(cls, checkpoint: dict, model, optimizer, scheduler, scaler, device) -> TrainingState:
        """Load `checkpoint` into the model, optimizer, scheduler, scaler and random generators; the plain state."""
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler and checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"], device)
        plain = checkpoint["state"]
        state = cls(**{name: plain[name] for name in cls.PLAIN},
                    step_history=StepHistory.from_state(checkpoint["step_history"]))
        state.history, state.oom_events = list(state.history), list(state.oom_events)
        state.best_weights = checkpoint["best_model"] if checkpoint["best_model"] is not None else checkpoint["model"]
        state.resumed_from_epoch, state.resumed_at_step = state.epoch, state.steps
        return state

    @property
    def oom_backoffs(self) -> int:
        return len(self.oom_events)


def resume_key(trajectory: dict, train_tokens, model) -> dict:
    """What a checkpoint must match to be continued: settings of the trajectory, training rows, model shapes."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return {**trajectory, "train_rows": len(train_tokens), "train_data": tokens_digest(train_tokens),
            "model": hashlib.sha256(shapes.encode()).hexdigest()[:16], "format": CHECKPOINT_FORMAT}


def tokens_digest(tokens) -> str:
    import numpy as np

    digest = hashlib.sha256()
    for array in (tokens.ids, tokens.offsets, tokens.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def cpu_state_dict(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

