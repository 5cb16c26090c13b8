"""Where and in what precision the model runs: shared by training and evaluation."""
from __future__ import annotations

from steps.runtime.errors import ReviewflowError

PRECISION_NAMES = {None: "fp32", "bfloat16": "bf16", "float16": "fp16"}


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
