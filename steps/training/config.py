"""What the training engine is told (TrainConfig, derived from steps/settings.py) and what it reports (TrainResult)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, make_dataclass

from steps import settings

# Settings a checkpoint must share with a run to continue it. Not the micro-batch (an out-of-memory back-off
# changes it without changing the trajectory), nor precision, compile or patience (resuming under other ones
# is allowed). best_epoch_by does not change the trajectory but does decide which epoch's weights the checkpoint
# holds as the best so far.
TRAJECTORY = ("epochs", "max_steps", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "seed",
              "freeze_encoder", "class_weights", "best_epoch_by")


class _TrainConfigMethods:
    @property
    def effective_batch(self) -> int:
        """Reviews per optimizer step: what the learning rate and schedule are defined on."""
        return self.batch_size * self.grad_accum

    def validate(self) -> None:
        """Raise a ReviewflowError naming the option of every value the settings table does not allow."""
        settings.check({s.name: getattr(self, s.attr) for s in settings.in_groups("training")})

    def as_params(self) -> dict:
        return {**asdict(self), "effective_batch": self.effective_batch}

    def trajectory(self) -> dict:
        return {**{k: getattr(self, k) for k in TRAJECTORY}, "effective_batch": self.effective_batch}

    @classmethod
    def from_values(cls, values: dict, **extra) -> TrainConfig:
        """From option values keyed by option name (batch-size) or attribute (batch_size); others are ignored."""
        names = {f.name for f in fields(cls)}
        picked = {key.replace("-", "_"): value for key, value in values.items() if key.replace("-", "_") in names}
        return cls(**picked, **extra)


# One field per setting of the `training` group, with its default; plus where to train, which is not a setting.
TrainConfig = make_dataclass(
    "TrainConfig",
    [(s.attr, s.type, field(default=s.default)) for s in settings.in_groups("training")]
    + [("device", str, field(default="auto"))],  # auto = CUDA when present, else CPU
    bases=(_TrainConfigMethods,),
    namespace={"__doc__": "The training engine's settings: the `training` group of steps/settings.py, plus device.",
               "__module__": __name__},
)


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
    budget_reached: bool = False  # --max-steps ended training (before the last epoch, or part way through one)
    class_weights: list[float] | None = None
    trainable_parameters: int = 0
    attention: str = ""
    compiled: bool = False
    selection: str = ""  # what picked the best epoch, in words (Trainer.selection)

    def summary(self) -> dict:
        best = self.history[self.best_epoch - 1] if self.history and self.best_epoch else {}
        return {
            "device": self.device,
            "precision": self.precision,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "budget_reached": self.budget_reached,
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

