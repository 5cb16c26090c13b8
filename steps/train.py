"""Train: fine-tune a sequence classifier on tokenized reviews.

The engine: length-bucketed batches with dynamic padding; AdamW (fused) with linear warmup and decay;
gradient clipping and accumulation; bf16 autocast on CUDA (fp16 with a grad scaler where bf16 is missing),
fp32 on CPU unless bf16 is asked for; SDPA attention where the model has it; optional torch.compile; per-epoch validation with early
stopping and the best epoch's weights restored at the end; `--freeze-encoder`; inverse-frequency class
weights. The same code runs on CPU and CUDA.

Two things make it hard to lose progress:
- Out of memory (CUDA): the optimizer step that ran out is discarded and redone with half the micro-batch
  and twice the accumulation. The reviews of every optimizer step are fixed by the sampler, so the effective
  batch, the data order and the learning-rate schedule are unchanged.
- Checkpoints: after every epoch the whole training state (weights, optimizer, scheduler, grad scaler, RNG
  states, sampler position, history, early-stopping state, best weights) goes to a CheckpointStore. A retried
  or resumed job given the same store continues after the last finished epoch; on CPU with a fixed seed the
  continuation is bit-identical to a run that was never interrupted.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from steps import faults
from steps.batching import bucketed_batches, collate, micro_batches, sorted_batches
from steps.errors import ReviewflowError

CHECKPOINT_FORMAT = 1
CLASS_WEIGHT_MODES = ("none", "auto")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16  # reviews per forward/backward pass (micro-batch)
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    patience: int = 2  # epochs without a better val_loss before stopping; 0 = never stop early
    freeze_encoder: bool = False
    class_weights: str = "none"  # "none" or "auto" (inverse class frequency)
    compile: bool = False
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 where bf16 is missing), fp32 on CPU
    device: str = "auto"  # "auto" = CUDA when present, else CPU

    @property
    def effective_batch(self) -> int:
        """Reviews per optimizer step: what the learning rate and schedule are defined on."""
        return self.batch_size * self.grad_accum

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"--grad-accum must be at least 1, got {self.grad_accum}"),
            (0 < self.learning_rate < 1, f"--learning-rate must be in (0, 1), got {self.learning_rate}"),
            (0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.patience >= 0, f"--patience must be 0 (never stop early) or more, got {self.patience}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be positive, got {self.max_grad_norm}"),
            (self.class_weights in CLASS_WEIGHT_MODES,
             f"--class-weights must be one of {', '.join(CLASS_WEIGHT_MODES)}, got {self.class_weights!r}"),
            (self.precision in PRECISIONS,
             f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ReviewflowError(message)

    def as_params(self) -> dict:
        return {**asdict(self), "effective_batch": self.effective_batch}

    def trajectory(self) -> dict:
        """The settings a checkpoint must share with a run to continue it (not the micro-batch: OOM changes it)."""
        keep = ("epochs", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "seed", "freeze_encoder",
                "class_weights")
        return {**{k: getattr(self, k) for k in keep}, "effective_batch": self.effective_batch}


@dataclass
class TrainResult:
    device: str
    precision: str
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    best_epoch: int = 0
    steps: int = 0
    train_seconds: float = 0.0  # time in optimizer steps (validation and checkpoints excluded)
    samples_per_s: float = 0.0
    real_tokens_per_s: float = 0.0
    padding_share: float = 0.0  # pad positions / all positions fed to the model
    micro_batch_size: int = 0  # at the end (after any OOM back-off)
    grad_accum: int = 0
    oom_backoffs: int = 0
    oom_events: list[dict] = field(default_factory=list)  # {"epoch", "step", "from", "to"}: micro-batch sizes
    step_history: dict = field(default_factory=dict)  # StepHistory.as_dict(): per-step loss and learning rate
    resumed_from_epoch: int = 0  # 0 = started from scratch
    resumed_at_step: int = 0  # optimizer steps already done by the attempt whose checkpoint was resumed
    stopped_early: bool = False
    class_weights: list[float] | None = None
    trainable_parameters: int = 0
    attention: str = ""
    compiled: bool = False

    def summary(self) -> dict:
        best = self.history[self.best_epoch - 1] if self.history and self.best_epoch else {}
        return {
            "device": self.device,
            "precision": self.precision,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "resumed_from_epoch": self.resumed_from_epoch,
            "steps": self.steps,
            "train_seconds": round(self.train_seconds, 2),
            "samples_per_s": round(self.samples_per_s, 2),
            "real_tokens_per_s": round(self.real_tokens_per_s, 1),
            "padding_share": round(self.padding_share, 4),
            "micro_batch_size": self.micro_batch_size,
            "grad_accum": self.grad_accum,
            "oom_backoffs": self.oom_backoffs,
            "trainable_parameters": self.trainable_parameters,
            **{f"best_{k}": v for k, v in best.items() if k.startswith("val_")},
        }


STEP_HISTORY_POINTS = 1000


class StepHistory:
    """Loss and learning rate per optimizer step, for the curves people look at; bounded in size.

    Every point covers `stride` consecutive steps: the mean loss, the learning rate and micro-batch of its last
    step. When more than `max_points` points would be kept, neighbours are merged and the stride doubles, so a
    run of a million steps keeps between max_points / 2 and max_points points (a few tens of KB).
    """

    def __init__(self, max_points: int = STEP_HISTORY_POINTS):
        self.max_points = max(2, max_points)
        self.stride = 1
        self.step, self.loss, self.learning_rate, self.micro_batch_size = [], [], [], []
        self._open = []  # (step, loss, lr, micro) of the steps not yet folded into a point

    def add(self, step: int, loss: float, learning_rate: float, micro_batch_size: int) -> None:
        self._open.append((step, loss, learning_rate, micro_batch_size))
        if len(self._open) == self.stride:
            self._fold()
        if len(self.step) > self.max_points:
            self._merge_pairs()

    def _fold(self) -> None:
        steps, losses, lrs, micros = zip(*self._open)
        self.step.append(steps[-1])
        self.loss.append(sum(losses) / len(losses))
        self.learning_rate.append(lrs[-1])
        self.micro_batch_size.append(min(micros))
        self._open = []

    def _merge_pairs(self) -> None:
        n = len(self.step) // 2 * 2  # an odd last point stays as it is
        merged_loss = [(self.loss[i] + self.loss[i + 1]) / 2 for i in range(0, n, 2)]
        self.step = self.step[1:n:2] + self.step[n:]
        self.learning_rate = self.learning_rate[1:n:2] + self.learning_rate[n:]
        self.micro_batch_size = [min(self.micro_batch_size[i:i + 2]) for i in range(0, n, 2)] + \
            self.micro_batch_size[n:]
        self.loss = merged_loss + self.loss[n:]
        self.stride *= 2

    def as_dict(self) -> dict:
        """Plain lists (a Metaflow artifact, a checkpoint entry): step, loss, learning_rate, micro_batch_size, stride.
        Steps not yet making up a whole point are included as one shorter point."""
        out = {"step": list(self.step), "loss": list(self.loss), "learning_rate": list(self.learning_rate),
               "micro_batch_size": list(self.micro_batch_size), "stride": self.stride}
        if self._open:
            steps, losses, lrs, micros = zip(*self._open)
            out["step"].append(steps[-1])
            out["loss"].append(sum(losses) / len(losses))
            out["learning_rate"].append(lrs[-1])
            out["micro_batch_size"].append(min(micros))
        return out

    def state(self) -> dict:
        return {**self.as_dict(), "open": [list(o) for o in self._open], "max_points": self.max_points,
                "points": len(self.step)}

    @classmethod
    def from_state(cls, state: dict | None) -> "StepHistory":
        history = cls(state.get("max_points", STEP_HISTORY_POINTS) if state else STEP_HISTORY_POINTS)
        if state:
            points = state["points"]
            history.step, history.loss = state["step"][:points], state["loss"][:points]
            history.learning_rate = state["learning_rate"][:points]
            history.micro_batch_size = state["micro_batch_size"][:points]
            history.stride, history._open = state["stride"], [tuple(o) for o in state["open"]]
        return history


def pick_device(requested: str = "auto"):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast_dtype(device, precision: str = "auto"):
    """The autocast dtype, None for fp32. auto: bf16 on CUDA where supported, else fp16; fp32 on CPU."""
    import torch

    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ReviewflowError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
        return torch.float16
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


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def _optimizer(model, config: TrainConfig, device):
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates all parameters in one pass (CPU and CUDA): ~4x less optimizer time than foreach.
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=device.type in ("cpu", "cuda"))


def evaluate_loss(model, tokens, batch_size: int, device, dtype=None, class_weights=None) -> dict:
    """Mean cross-entropy (class-weighted when weights are given) and accuracy of `model` on `tokens`.

    On CUDA out-of-memory the evaluation starts over with half the batch.
    """
    while True:
        try:
            return _evaluate_loss(model, tokens, batch_size, device, dtype, class_weights)
        except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
            if not is_out_of_memory(err) or batch_size == 1:
                raise
        batch_size //= 2
        free_memory(device)


def _evaluate_loss(model, tokens, batch_size, device, dtype, class_weights) -> dict:
    import torch

    model.eval()
    weight = torch.tensor(class_weights, device=device) if class_weights else None
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    total_weight = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    with torch.inference_mode():
        for rows in sorted_batches(tokens.lengths, batch_size):
            ids, mask, labels = collate(tokens, rows, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            total_loss += torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="sum")
            total_weight += weight[labels].sum() if weight is not None else len(rows)
            correct += (logits.argmax(-1) == labels).sum()
    seen = max(len(tokens), 1)
    return {"val_loss": (total_loss / total_weight.clamp(min=1e-12)).item(), "val_accuracy": correct.item() / seen}


def _rng_state(device) -> dict:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, device) -> None:
    import random

    import numpy as np
    import torch

    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _fingerprint(tokens) -> str:
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for array in (tokens.ids, tokens.offsets, tokens.labels):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def _cpu_state_dict(model) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class _Training:
    """One training job: the model, its optimizer and schedule, and where it stands."""

    def __init__(self, model, train_tokens, val_tokens, config: TrainConfig, on_step, log, checkpoints,
                 after_epoch, before_micro_batch, progress):
        import torch

        self.model, self.train, self.val, self.config = model, train_tokens, val_tokens, config
        self.on_step, self.log, self.checkpoints = on_step, log, checkpoints
        self.after_epoch, self.before_micro_batch, self.progress = after_epoch, before_micro_batch, progress
        self.device = pick_device(config.device)
        self.dtype = autocast_dtype(self.device, config.precision)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]
        self.result = TrainResult(device=str(self.device), precision=precision)
        self.micro = config.batch_size
        if config.freeze_encoder:
            freeze_encoder(model)
        model.to(self.device)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.result.trainable_parameters = sum(p.numel() for p in self.trainable)
        self.result.attention = str(getattr(model.config, "_attn_implementation", "") or "eager")
        num_labels = int(getattr(model.config, "num_labels", 2))
        if config.class_weights == "auto":
            self.result.class_weights = inverse_frequency_weights(train_tokens.labels, num_labels)
        self.class_weights = self.result.class_weights
        self.loss_weight = torch.tensor(self.class_weights, device=self.device) if self.class_weights else None
        self.forward = self._compiled(model) if config.compile else model
        self.steps_per_epoch = math.ceil(len(train_tokens) / config.effective_batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(config.warmup_ratio * self.total_steps)
        self.optimizer = _optimizer(model, config, self.device)
        self.scheduler = linear_warmup_decay(self.optimizer, self.warmup_steps, self.total_steps)
        # Where training stands; all of it goes into a checkpoint.
        self.epoch = 0  # epochs finished
        self.best_loss, self.best_state, self.stale = math.inf, None, 0
        self.samples = self.real_tokens = self.padded_tokens = 0
        self.step_history = StepHistory()

    # --- setup ---------------------------------------------------------------------------------------------
    def _compiled(self, model):
        import torch

        self.result.compiled = True
        return torch.compile(model, dynamic=True)

    def describe(self) -> None:
        c, r = self.config, self.result
        total = sum(p.numel() for p in self.model.parameters())
        self.log(f"training on {r.device} ({r.precision}, attention {r.attention}"
                 f"{', torch.compile' if r.compiled else ''}): {len(self.train)} reviews, {c.epochs} epoch(s) of "
                 f"{self.steps_per_epoch} steps; batch {c.effective_batch} = micro-batch {self.micro} x "
                 f"{self.accumulation} accumulation; {self.warmup_steps} warmup steps of {self.total_steps}")
        if c.freeze_encoder:
            self.log(f"--freeze-encoder: training only the classification head "
                     f"({r.trainable_parameters:,} of {total:,} parameters)")
        if self.class_weights:
            self.log("class weights (inverse frequency): " + ", ".join(
                f"{self._label_name(i)} {w:.4f}" for i, w in enumerate(self.class_weights)))

    def _label_name(self, index: int) -> str:
        names = getattr(self.model.config, "id2label", None) or {}
        return str(names.get(index, names.get(str(index), index)))

    @property
    def accumulation(self) -> int:
        return math.ceil(self.config.effective_batch / self.micro)

    def signature(self) -> dict:
        import hashlib

        shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in self.model.state_dict().items())
        return {**self.config.trajectory(), "train_rows": len(self.train), "train_data": _fingerprint(self.train),
                "model": hashlib.sha256(shapes.encode()).hexdigest()[:16], "format": CHECKPOINT_FORMAT}

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        best_is_current = self.result.best_epoch == self.epoch
        return {
            "signature": self.signature(),
            "epoch": self.epoch,
            "sampler": {"seed": self.config.seed, "next_epoch": self.epoch + 1, "next_batch": 0},
            "model": _cpu_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": _rng_state(self.device),
            "micro_batch_size": self.micro,
            "oom_backoffs": self.result.oom_backoffs,
            "oom_events": self.result.oom_events,
            "step_history": self.step_history.state(),
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_loss": self.best_loss,
            "best_model": None if best_is_current or self.best_state is None else self.best_state,
            "stale": self.stale,
            "stopped_early": self.result.stopped_early,
            "counters": {"steps": self.result.steps, "samples": self.samples, "real_tokens": self.real_tokens,
                         "padded_tokens": self.padded_tokens, "train_seconds": self.result.train_seconds},
        }

    def save_checkpoint(self) -> None:
        """Save the state; a failed save (storage down, disk full) is logged and training goes on."""
        started = time.perf_counter()
        try:
            self.checkpoints.save(self.state())
        except Exception as err:  # noqa: BLE001 - a checkpoint is insurance; losing one must not stop training
            self.log(f"could not save the checkpoint of epoch {self.epoch} to {self.checkpoints.location} "
                     f"({type(err).__name__}: {err}); training goes on, a restart now would begin from the "
                     "previous checkpoint")
            return
        self.log(f"checkpoint of epoch {self.epoch} saved to {self.checkpoints.location} "
                 f"({time.perf_counter() - started:.1f} s)")

    def resume(self) -> None:
        """Continue from the newest compatible checkpoint, if there is one."""
        try:
            found = self.checkpoints.load()
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint must not kill the job
            self.log(f"cannot read the checkpoint in {self.checkpoints.location} ({err}); starting from epoch 0")
            return
        if found is None:
            return
        state, location = found
        expected = self.signature()
        if state.get("signature") != expected:
            differs = sorted(k for k in expected if state.get("signature", {}).get(k) != expected[k])
            self.log(f"ignoring the checkpoint in {location}: it was made with different {', '.join(differs)}; "
                     "starting from epoch 0")
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.micro = state["micro_batch_size"]
        r = self.result
        r.oom_backoffs, r.history, r.best_epoch = state["oom_backoffs"], list(state["history"]), state["best_epoch"]
        r.oom_events = list(state.get("oom_events", []))  # absent in checkpoints of older versions
        self.step_history = StepHistory.from_state(state.get("step_history"))
        r.stopped_early, r.resumed_from_epoch = state["stopped_early"], state["epoch"]
        self.best_loss, self.stale = state["best_loss"], state["stale"]
        self.best_state = state["best_model"] if state["best_model"] is not None else state["model"]
        counters = state["counters"]
        r.steps, r.train_seconds = counters["steps"], counters["train_seconds"]
        r.resumed_at_step = r.steps
        self.samples, self.real_tokens, self.padded_tokens = (
            counters["samples"], counters["real_tokens"], counters["padded_tokens"])
        _set_rng_state(state["rng"], self.device)
        self.log(f"resuming from checkpoint epoch {self.epoch} ({location}): step {r.steps} of {self.total_steps}, "
                 f"best epoch so far {r.best_epoch}, micro-batch {self.micro}")

    # --- one optimizer step --------------------------------------------------------------------------------
    def optimizer_step(self, rows, step: int):
        """Forward/backward over the micro-batches of one optimizer step, then clip and update.

        Returns the step's loss (a 0-dim tensor: no device sync here). On out-of-memory the step's gradients
        are dropped, the micro-batch is halved and the same rows are run again.
        """
        import torch

        weights = self.class_weights
        denominator = float(sum(weights[y] for y in self.train.labels[rows])) if weights else float(len(rows))
        while True:
            try:
                loss = self._accumulate(rows, denominator, step)
                break
            except Exception as err:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                if not is_out_of_memory(err):
                    raise
                failed = self.micro
            self._back_off(failed, step)  # outside `except`: the traceback (and its tensors) is gone by now
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss

    def _accumulate(self, rows, denominator: float, step: int):
        import torch

        total = torch.zeros((), device=self.device)
        pad = 8 if self.result.compiled else 1
        for part in micro_batches(rows, self.micro):
            if self.before_micro_batch:
                self.before_micro_batch(step, len(part))
            ids, mask, labels = collate(self.train, part, self.device, pad_to_multiple_of=pad)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.forward(input_ids=ids, attention_mask=mask).logits
            # Summed over the micro-batch, divided by the whole step's rows (or class weights): the gradients
            # add up to those of one batch of all the step's rows, whatever the micro-batch.
            loss = torch.nn.functional.cross_entropy(logits.float(), labels, weight=self.loss_weight,
                                                     reduction="sum") / denominator
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
            self.padded_tokens += ids.numel()
        return total

    def _back_off(self, failed: int, step: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        free_memory(self.device)
        if failed <= 1:
            raise ReviewflowError(
                f"out of memory on {self.device} at optimizer step {step} with a micro-batch of 1 review: the model "
                "does not fit even one review. Use a smaller --max-length or --model, or --freeze-encoder.")
        self.micro = failed // 2
        self.result.oom_backoffs += 1
        self.result.oom_events.append({"epoch": self.epoch + 1, "step": step, "from": failed, "to": self.micro})
        self.log(f"out of memory at step {step} with micro-batch {failed}: continuing with micro-batch {self.micro} "
                 f"x {self.accumulation} accumulation (effective batch {self.config.effective_batch} and the "
                 f"learning-rate schedule unchanged); redoing step {step}")

    # --- epochs --------------------------------------------------------------------------------------------
    def run_epoch(self) -> dict:
        import torch

        from steps.progress import Progress

        epoch, config, lengths = self.epoch + 1, self.config, self.train.lengths
        self.model.train()
        batches = bucketed_batches(lengths, config.effective_batch, seed=config.seed + epoch)
        progress = Progress(f"train epoch {epoch}/{config.epochs}", len(batches), "steps", rate_unit="samples",
                            log=self.log, mode=self.progress, finish_line=False)  # end_epoch logs the epoch
        # Step losses stay on the device and are read in groups: one sync per group, not per step, on CUDA.
        group = 1 if self.device.type == "cpu" else 20
        pending, loss_sum, started = [], 0.0, time.perf_counter()

        def flush():
            nonlocal loss_sum
            values = torch.stack([loss for _, loss, _, _ in pending]).tolist()
            for (step, _, lr, rows), value in zip(pending, values):
                loss_sum += value * rows
                self.step_history.add(step, value, lr, self.micro)
                if self.on_step:
                    self.on_step(step, {"train_loss": value, "learning_rate": lr, "micro_batch_size": self.micro})
            progress.update(len(pending), rated=sum(p[3] for p in pending),
                            note=f"loss {sum(values) / len(values):.4f}")
            pending.clear()

        try:
            for rows in batches:
                step = self.result.steps + 1
                lr = self.scheduler.get_last_lr()[0]
                loss = self.optimizer_step(rows, step)
                self.result.steps = step
                self.samples += len(rows)
                self.real_tokens += int(lengths[rows].sum())
                pending.append((step, loss, lr, len(rows)))
                if len(pending) >= group:
                    flush()
            if pending:
                flush()
        finally:
            progress.close()
        seconds = time.perf_counter() - started
        self.result.train_seconds += seconds
        self.epoch = epoch
        return {"epoch": epoch, "train_loss": loss_sum / len(self.train),
                "epoch_samples_per_s": round(len(self.train) / seconds, 2) if seconds else 0.0}

    def end_epoch(self, metrics: dict, started: float) -> None:
        """Validate, keep the best weights, decide on early stopping."""
        config, result = self.config, self.result
        if self.val is not None and len(self.val):
            metrics.update(evaluate_loss(self.model, self.val, self.micro * 2, self.device, self.dtype,
                                         self.class_weights))
        metrics["epoch_seconds"] = round(time.perf_counter() - started, 2)
        result.history.append(metrics)
        text = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k in ("train_loss", "val_loss", "val_accuracy"))
        self.log(f"epoch {metrics['epoch']}/{config.epochs}: {text}  {metrics['epoch_samples_per_s']:.1f} samples/s  "
                 f"({metrics['epoch_seconds']:.0f} s)")
        score = metrics.get("val_loss", -metrics["epoch"])  # no validation set: the last epoch is the best
        if score < self.best_loss:
            self.best_loss, self.stale, result.best_epoch = score, 0, metrics["epoch"]
            self.best_state = _cpu_state_dict(self.model)
        else:
            self.stale += 1
            if config.patience and self.stale >= config.patience:
                result.stopped_early = True
                self.log(f"early stopping: val_loss has not improved for {self.stale} epoch(s)")

    def run(self) -> TrainResult:
        config, result = self.config, self.result
        if self.checkpoints is not None:
            self.resume()
        self.describe()
        while self.epoch < config.epochs and not result.stopped_early:
            started = time.perf_counter()
            metrics = self.run_epoch()
            self.end_epoch(metrics, started)
            if self.checkpoints is not None:
                self.save_checkpoint()
            if self.after_epoch:
                self.after_epoch(self.epoch)
            faults.inject(f"train/after_epoch_{self.epoch}")  # test hook; nothing unless a test sets it
        if self.best_state is not None and result.best_epoch != self.epoch:
            self.log(f"restoring the weights of epoch {result.best_epoch} (lowest val_loss {self.best_loss:.4f})")
            self.model.load_state_dict(self.best_state)
        result.micro_batch_size, result.grad_accum = self.micro, self.accumulation
        seconds = result.train_seconds
        result.samples_per_s = self.samples / seconds if seconds else 0.0
        result.real_tokens_per_s = self.real_tokens / seconds if seconds else 0.0
        result.padding_share = 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0
        result.step_history = self.step_history.as_dict()
        self.model.to("cpu")
        return result


def train_classifier(
    model,
    train_tokens,
    val_tokens,
    config: TrainConfig,
    on_step: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
    checkpoints=None,
    after_epoch: Callable[[int], None] | None = None,
    before_micro_batch: Callable[[int, int], None] | None = None,
    progress: str | None = None,
) -> TrainResult:
    """Fine-tune `model` in place and return what happened; the best epoch's weights are kept.

    checkpoints: a steps.checkpoints.CheckpointStore; training resumes from it and saves to it every epoch.
    on_step(step, metrics): per optimizer step (train_loss, learning_rate, micro_batch_size).
    after_epoch(epoch): after an epoch is finished and checkpointed.
    before_micro_batch(step, rows): before every forward pass (tests inject out-of-memory errors here).
    progress: "bar", "lines" (a line every ~10 s) or "quiet" (the epoch lines only); default: see steps/progress.py.
    `val_tokens` may be None: then no validation, no early stopping, and the last epoch is kept.
    """
    config.validate()
    seed_everything(config.seed)
    training = _Training(model, train_tokens, val_tokens, config, on_step, log, checkpoints, after_epoch,
                         before_micro_batch, progress)
    return training.run()
