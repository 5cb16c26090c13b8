"""Where and in what precision the model runs: shared by training and evaluation."""
from __future__ import annotations

from steps.runtime.errors import ReviewflowError

PRECISION_NAMES = {None: "fp32", "bfloat16": "bf16", "float16": "fp16"}


def pick_device(requested: str = "auto"):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# On a CPU, bf16 autocast pays off only where the matrices are big enough: a training step of a 2-layer BERT on a
# Zen 4 core (AVX512-BF16) was 0.88x as fast in bf16 as in fp32 at width 32, 1.07-1.19x at 64-128, 1.5x at 256-384.
CPU_BF16_MIN_WIDTH = 256
# What the training benchmark showed for `auto`'s CPU choice (docs/benchmarks.md#precision-on-cpu).
CPU_BF16_EVIDENCE = ("bench: MiniLM-L6 on the Amazon review snippets, bf16 within 0.5 accuracy points of fp32 "
                     "at ~1.4x its samples/s; docs/benchmarks.md")


def autocast_dtype(device, precision: str = "auto", model=None):
    """The autocast dtype, None for fp32 (see choose_precision). Without a model, auto means fp32 on CPU."""
    return choose_precision(device, precision, model)[0]


def choose_precision(device, precision: str = "auto", model=None):
    """(autocast dtype or None for fp32, why). auto: on CUDA bf16 where supported, else fp16; on a CPU bf16 where it
    has bf16 matrix units (AMX or AVX512-BF16) and `model` is at least CPU_BF16_MIN_WIDTH wide, else fp32."""
    import torch

    if precision == "fp32":
        return None, "asked for"
    if precision == "bf16":
        return torch.bfloat16, "asked for"
    if precision == "fp16":
        if device.type != "cuda":
            raise ReviewflowError("--precision fp16 needs a CUDA GPU; on CPU use fp32 or bf16")
        return torch.float16, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "this GPU supports bf16"
        return torch.float16, "this GPU has no bf16; fp16 with a gradient scaler"
    if device.type != "cpu":
        return None, f"fp32 on {device.type}"
    units, about = cpu_bf16_units()
    if units is None:
        return None, about
    width = model_width(model)
    if width is None:
        return None, f"{about}, but the model's width is unknown"
    if width < CPU_BF16_MIN_WIDTH:
        return None, f"{about}, but the model is {width} wide: bf16 pays off on a CPU from {CPU_BF16_MIN_WIDTH}"
    return torch.bfloat16, f"{about} and the model is {width} wide ({CPU_BF16_EVIDENCE})"


def cpu_bf16_units() -> tuple[str | None, str]:
    """('amx_bf16' or 'avx512_bf16', description) where this CPU multiplies bf16 matrices natively, else (None,
    why not). From the CPU flags in /proc/cpuinfo and the instruction set PyTorch dispatches to."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ... (ATEN_CPU_CAPABILITY)
    flags = cpu_flags()
    found = next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)
    if found is None:
        where = "in /proc/cpuinfo" if flags else "(no CPU flags readable from /proc/cpuinfo)"
        return None, f"this CPU has no bf16 matrix units (no amx_bf16 or avx512_bf16 flag {where})"
    if not capability.upper().startswith("AVX512"):
        return None, f"this CPU has {found}, but PyTorch runs its {capability} kernels (ATEN_CPU_CAPABILITY?)"
    return found, f"this CPU has {found}"


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in /proc/cpuinfo (Linux); empty where there is none."""
    try:
        with open(path, encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def model_width(model) -> int | None:
    """The hidden size of a transformers model (hidden_size, or DistilBERT's dim), None when unknown."""
    config = getattr(model, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    return int(width) if isinstance(width, int) else None


def precision_name(dtype) -> str:
    """fp32, bf16 or fp16 for an autocast dtype (None = fp32)."""
    return PRECISION_NAMES[None if dtype is None else str(dtype).removeprefix("torch.")]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (isinstance(err, RuntimeError) and "out of memory" in str(err))


def free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rng_state(device) -> dict:
    """Every random generator training draws from (Python, NumPy, torch CPU, CUDA), as checkpointable values."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device) -> None:
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
