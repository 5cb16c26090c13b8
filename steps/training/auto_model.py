"""`--model auto`, the default: the stronger packaged encoder where this machine trains it in minutes, the small
one everywhere else; and each packaged encoder's own recipe, used where `--epochs` is left at 0.

- MPNet-base (`mpnet`, 110M parameters) on a CUDA GPU, or on a CPU with AMX, Intel's bf16 matrix units: one epoch
  of sample:amazon took 85 s on 2 such cores (bf16 autocast, which `--precision auto` picks there) and reached
  test accuracy 0.907 / F1 0.921.
- MiniLM-L6 (`minilm`, 22.7M) everywhere else: on an AMD EPYC without AMX one MPNet epoch took 283 s on one
  core (bf16 over AVX512-BF16) against MiniLM's 34 s; MiniLM reaches 0.846 / 0.871 in its two epochs on 2 cores
  in about 50 s. AVX512-BF16 alone (AMD Zen 4, Intel Cooper Lake) is a vector extension, not a matrix unit.
  (docs/model-comparison.md has the runs behind these figures.)

What is measured rather than guessed, where that is cheap: a CUDA GPU is one torch can use (torch is imported only
where the installed build and the machine could have one: a CPU wheel, `+cpu`, or no NVIDIA driver rules it
out), and AMX is a CPU flag whose bf16 matrix multiplies are then timed against fp32 (a VM may show the flag
without the kernel letting programs use the units). Where the train step runs on Kubernetes (Argo Workflows),
its `@resources(gpu=1)` gives it a GPU that the start step does not see: the flow says so (`capabilities`).

The choice, why it was made and what the machine showed are recorded by the flow (log, summary, MLflow params);
the resolved model and epochs are what the retrain identity compares, so a scheduled retrain on the same machine
stays "unchanged" and a move to other hardware says why it retrains.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from steps.training.models import DEFAULT_MODEL, MPNET_MODEL, canonical_name

AUTO = "auto"
DEFAULT_EPOCHS = 2  # what `--epochs 0` means for any model without a recipe of its own
RECIPES = {DEFAULT_MODEL: {"epochs": 2}, MPNET_MODEL: {"epochs": 1}}  # by canonical name; lr: the setting's 5e-5
AMX_MIN_SPEEDUP = 2.0  # bf16 GEMMs at least this much faster than fp32: the AMX units are really there


@dataclass(frozen=True)
class Capabilities:
    gpu: str | None = None  # the CUDA GPU the train step gets (its name), or None
    amx: bool = False  # the CPU multiplies bf16 matrices on AMX units (flag present and measured)
    about: str = ""  # what was looked at, for the log

    def describe(self) -> str:
        return self.about or (f"CUDA GPU {self.gpu}" if self.gpu else "CPU with AMX" if self.amx
                              else "CPU without AMX, no CUDA GPU")


@dataclass(frozen=True)
class ModelChoice:
    requested: str  # --model as given
    model: str  # what it resolved to (what the loaders take; canonical for the packaged encoders)
    why: str  # one sentence for the log, the summary and MLflow
    machine: str = ""  # Capabilities.describe() where auto looked, else ""

    @property
    def automatic(self) -> bool:
        return self.requested == AUTO

    def as_dict(self) -> dict:
        return asdict(self)


def choose_model(requested: str, capabilities: Capabilities | None = None) -> ModelChoice:
    """--model as given -> the model to train. An explicit model always wins; `auto` looks at the machine
    (`detect_capabilities()` unless `capabilities` are given)."""
    if requested != AUTO:
        return ModelChoice(requested, requested, f"--model {requested} given")
    caps = capabilities if capabilities is not None else detect_capabilities()
    if caps.gpu:
        return ModelChoice(AUTO, MPNET_MODEL, f"auto: a CUDA GPU ({caps.gpu}) trains MPNet-base in seconds per "
                                              "epoch", caps.describe())
    if caps.amx:
        return ModelChoice(AUTO, MPNET_MODEL, "auto: this CPU has AMX bf16 matrix units, on which MPNet-base "
                                              "trains in minutes (85 s per epoch of sample:amazon on 2 cores)",
                           caps.describe())
    return ModelChoice(AUTO, DEFAULT_MODEL, "auto: no CUDA GPU and no AMX bf16 matrix units here, where MPNet-base "
                                            "takes minutes per epoch of sample:amazon (283 s on one core without "
                                            "AMX) and MiniLM-L6 well under one (pin another with --model)",
                       caps.describe())


def recipe_values(model: str, values: dict) -> dict:
    """`values` (settings by option name) with `epochs` 0 replaced by `model`'s recipe."""
    if values.get("epochs", 1) != 0:
        return dict(values)
    recipe = RECIPES.get(canonical_name(model), {"epochs": DEFAULT_EPOCHS})
    return {**values, "epochs": recipe["epochs"]}


def detect_capabilities(cpuinfo: str = "/proc/cpuinfo") -> Capabilities:
    """What this machine offers for training (see the module's docstring): torch is imported only where a GPU or
    AMX is possible at all, so on a plain CPU this reads two files."""
    from steps.training.device import cpu_flags

    notes = []
    gpu = _cuda_gpu() if _cuda_possible() else None
    if gpu:
        return Capabilities(gpu=gpu, about=f"CUDA GPU {gpu}")
    flags = cpu_flags(cpuinfo)
    if "amx_bf16" not in flags:
        notes.append("no amx_bf16 CPU flag" + (" (avx512_bf16 only)" if "avx512_bf16" in flags else ""))
        return Capabilities(about="no CUDA GPU; " + "; ".join(notes))
    speedup = bf16_speedup()
    if speedup < AMX_MIN_SPEEDUP:
        return Capabilities(about=f"no CUDA GPU; the amx_bf16 flag is set but bf16 matrix multiplies ran only "
                                  f"{speedup:.1f}x fp32 here (AMX units unusable?)")
    return Capabilities(amx=True, about=f"no CUDA GPU; AMX: bf16 matrix multiplies {speedup:.1f}x fp32")


def _cuda_possible() -> bool:
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    if "+cpu" in version:
        return False
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists()


def _cuda_gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def bf16_speedup(size: int = 512, seconds: float = 0.04, rounds: int = 3) -> float:
    """bf16 over fp32 matrix-multiply throughput on this CPU (size x size): the best of `rounds` interleaved
    timings of about `seconds` each per type, so that a busy moment does not decide which model a run trains (the
    choice is in the retrain identity). AMX gives 5-10x; without it bf16 is at most ~1.5x here."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    pairs = {dtype: (a.to(dtype), b.to(dtype)) for dtype in (torch.bfloat16, torch.float32)}

    def rate(dtype) -> float:
        x, y = pairs[dtype]
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            torch.mm(x, y)
            count += 1
        return count / elapsed

    for x, y in pairs.values():
        torch.mm(x, y)  # warm-up: oneDNN picks its kernel on the first call
    best = {dtype: 0.0 for dtype in pairs}
    for _ in range(rounds):
        for dtype in pairs:
            best[dtype] = max(best[dtype], rate(dtype))
    return best[torch.bfloat16] / best[torch.float32]
