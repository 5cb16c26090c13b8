"""The engine's CUDA path, unit by unit: bf16 and fp16 training, a real out-of-memory recognised as one, the CUDA
random state in a checkpoint, validation on the GPU. Marked `cuda`: they skip on a CPU (CI), and
`python tests/gpu/check.py` runs them on a GPU machine."""
import math

import pytest
import torch

from tests.gpu.check import TINY, encoder, synthetic

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "needs a CUDA GPU: python tests/gpu/check.py runs these on a GPU machine"))]


def train(precision: str, epochs: int = 1, **extra):
    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier

    config = TrainConfig(epochs=epochs, batch_size=32, seed=0, device="cuda", precision=precision, **extra)
    return train_classifier(encoder(TINY["tiny"]), synthetic(256, 64), synthetic(64, 64, seed=1), config,
                            log=lambda _: None, progress="quiet")


@pytest.mark.parametrize("precision, expected", [("auto", "bf16" if torch.cuda.is_available()
                                                  and torch.cuda.is_bf16_supported() else "fp16"),
                                                 ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")])
def test_training_on_cuda_in_each_precision(precision, expected):
    result = train(precision)
    assert result.device.startswith("cuda") and result.precision == expected
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)


def test_a_real_out_of_memory_is_recognised_and_the_cache_given_back():
    from steps.training.device import free_memory, is_out_of_memory

    total = torch.cuda.get_device_properties(0).total_memory
    kept = torch.empty(total // 4, dtype=torch.uint8, device="cuda")  # cached by the allocator once freed
    with pytest.raises(Exception) as raised:
        torch.empty(2 * total, dtype=torch.uint8, device="cuda")
    assert is_out_of_memory(raised.value) and not is_out_of_memory(ValueError("out of range"))
    del kept
    assert torch.cuda.memory_reserved() >= total // 4
    free_memory(torch.device("cuda"))
    assert torch.cuda.memory_reserved() < total // 4  # empty_cache gave the freed block back


def test_the_cuda_random_state_goes_into_a_checkpoint_and_comes_back():
    from steps.training.device import rng_state, set_rng_state

    device = torch.device("cuda")
    state = rng_state(device)
    assert "cuda" in state
    first = torch.rand(4, device=device)
    set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), first)


def test_validation_on_the_gpu_agrees_with_the_cpu():
    from steps.training.validation import evaluate_loss

    model, tokens = encoder(TINY["tiny"]).eval(), synthetic(64, 64, seed=2)
    on_cpu = evaluate_loss(model, tokens, 16, torch.device("cpu"))
    on_gpu = evaluate_loss(model.to("cuda"), tokens, 16, torch.device("cuda"))
    assert on_gpu["val_loss"] == pytest.approx(on_cpu["val_loss"], rel=1e-4)
    # a random model's scores sit near 0.5: a row may tip to the other class, not more than one in 64
    assert abs(on_gpu["val_accuracy"] - on_cpu["val_accuracy"]) <= 1 / 64
