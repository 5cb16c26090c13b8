"""The served model's backends (steps/serving/package.py, onnx_export.py): the ONNX graphs of a tiny classifier
score like PyTorch, a variant that does not is refused by its parity check, and the backend is chosen by a fixed
order (the same inputs are served the same way however busy the machine), not by the speed measured."""
import numpy as np
import pytest

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.serving.onnx_export import export_onnx, quantize_int8
from steps.serving.package import FP32_TOLERANCE, check_parity, choose_backend
from tests.fixtures import review_frame


def save_classifier(encoder_dir, target, seed: int) -> str:
    """The tiny encoder with a classification head initialized from `seed`, saved as training saves it."""
    import torch

    from steps.training.models import load_classifier, load_tokenizer

    torch.manual_seed(seed)
    load_classifier(str(encoder_dir)).save_pretrained(target)
    load_tokenizer(str(encoder_dir)).save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_model_dir) -> tuple[str, dict]:
    folder = tmp_path_factory.mktemp("served")
    model = save_classifier(tiny_model_dir, folder / "classifier", seed=0)
    fp32 = export_onnx(model, folder / "model.onnx")
    return model, {"onnx": str(fp32), "onnx-int8": str(quantize_int8(fp32, folder / "model.int8.onnx"))}


def test_the_onnx_graphs_score_the_test_rows_like_pytorch(classifier):
    model, onnx_files = classifier
    rows = review_frame(48, seed=5)
    parity = check_parity(model, onnx_files, rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN], max_length=32)
    assert list(parity) == ["torch", "onnx", "onnx-int8"]
    assert parity["torch"]["passed"] and parity["torch"]["max_abs_diff"] == 0.0
    assert parity["onnx"]["passed"] and 0.0 <= parity["onnx"]["max_abs_diff"] <= FP32_TOLERANCE
    assert parity["onnx"]["accuracy"] == parity["torch"]["accuracy"]
    assert 0.0 < parity["onnx-int8"]["max_abs_diff"] < 0.5  # quantized: close, not equal
    assert all(figures["texts_per_s"] > 0 for figures in parity.values())


def test_an_onnx_graph_of_another_model_fails_its_parity_check(classifier, tiny_model_dir, tmp_path):
    """The check compares probabilities row by row: a graph that is not this model's is caught."""
    model, onnx_files = classifier
    other = export_onnx(save_classifier(tiny_model_dir, tmp_path / "other", seed=1), tmp_path / "other.onnx")
    rows = review_frame(48, seed=5)
    parity = check_parity(model, {**onnx_files, "onnx": str(other)}, rows[TEXT_COLUMN].tolist(),
                          rows[LABEL_COLUMN], max_length=32)
    assert not parity["onnx"]["passed"] and parity["onnx"]["max_abs_diff"] > FP32_TOLERANCE
    backend, why = choose_backend({**parity, "onnx-int8": {**parity["onnx-int8"], "passed": False}})
    assert backend == "torch" and "first of onnx-int8, onnx, torch that passed parity" in why


def speeds(torch: float, onnx: float, int8: float, int8_passed: bool = True) -> dict:
    return {"torch": {"passed": True, "texts_per_s": torch}, "onnx": {"passed": True, "texts_per_s": onnx},
            "onnx-int8": {"passed": int8_passed, "texts_per_s": int8}}


@pytest.mark.parametrize("measured", [speeds(14040, 16345, 9459), speeds(7722, 10967, 16296)])
def test_the_backend_follows_a_fixed_order_whatever_speeds_were_measured(measured):
    """These two measurements are of one tiny model, trained twice on the same inputs on a busy machine: choosing
    the fastest served it with fp32 ONNX once and with int8 once."""
    backend, why = choose_backend(measured)
    assert backend == "onnx-int8"
    assert f"onnx-int8 {measured['onnx-int8']['texts_per_s']:.0f}" in why  # the speeds are still reported
    assert choose_backend(measured, gpu=True)[0] == "torch"  # PyTorch on a GPU; the ONNX graphs run on the CPU


def test_a_failed_check_moves_to_the_next_backend_and_an_asked_backend_is_used_and_says_so():
    assert choose_backend(speeds(40, 77, 154, int8_passed=False))[0] == "onnx"
    backend, why = choose_backend(speeds(40, 77, 154, int8_passed=False), asked="onnx-int8")
    assert backend == "onnx-int8" and why == "--serving-backend onnx-int8 (it did not pass its parity check)"
    assert choose_backend(speeds(40, 77, 154), asked="torch") == ("torch", "--serving-backend torch")


def test_probabilities_are_numbers_between_zero_and_one(classifier):
    from steps.serving.classifier_model import Scorer

    model, onnx_files = classifier
    for backend in ("torch", "onnx", "onnx-int8"):
        probs = Scorer(model, backend, onnx_files.get(backend), 32, 16).probabilities(["great", "awful, broke"])
        assert probs.shape == (2,) and np.all((probs >= 0) & (probs <= 1)), backend
