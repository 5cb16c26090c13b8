"""The served model's backends (steps/serving/package.py, onnx_export.py): the ONNX graphs of a tiny classifier
score like PyTorch, a variant that does not is refused by its parity check, and the backend is chosen by a fixed
order (the same inputs are served the same way however busy the machine), not by the speed measured."""
import numpy as np
import pytest

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.serving.onnx_export import export_onnx, quantize_int8
from steps.serving.package import FP32_TOLERANCE, INT8_TOLERANCE, check_parity, choose_backend
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> str:
    """The tiny classifier fine-tuned on reviews whose sentiment is in clear words: its predictions depend on
    the text, so an accuracy drop can be seen."""
    import torch

    from steps.training.config import TrainConfig
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier, load_tokenizer
    from steps.training.tokenize import encode

    rows = review_frame(240, seed=0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(3)
    model = load_classifier(str(tiny_model_dir))
    train_classifier(model, encode(rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN].tolist(), tokenizer, 32), None,
                     TrainConfig(epochs=4, batch_size=16, learning_rate=8e-3, seed=3), log=lambda line: None,
                     progress="quiet")
    target = tmp_path_factory.mktemp("trained")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def test_an_int8_graph_is_judged_by_the_accuracy_and_f1_it_loses(trained, classifier, tmp_path):
    """int8 may move probabilities; it passes while it loses at most INT8_TOLERANCE of accuracy and of F1, and a
    graph that predicts worse than that fails."""
    untrained_onnx = classifier[1]["onnx"]  # a head that was never trained: it does not read the reviews
    fp32 = export_onnx(trained, tmp_path / "model.onnx")
    rows = review_frame(80, seed=5)
    texts, labels = rows[TEXT_COLUMN].tolist(), rows[LABEL_COLUMN]
    own = check_parity(trained, {"onnx": str(fp32), "onnx-int8": str(quantize_int8(fp32, tmp_path / "q.onnx"))},
                       texts, labels, max_length=32)
    reference = own["torch"]
    assert reference["accuracy"] >= 0.8  # the premise: the trained model reads the sentiment words
    int8 = own["onnx-int8"]  # whichever way it went, the verdict follows the two drops
    drops = (reference["accuracy"] - int8["accuracy"], reference["f1"] - int8["f1"])
    assert int8["passed"] == (max(drops) <= INT8_TOLERANCE + 1e-12), (int8, reference)
    worse = check_parity(trained, {"onnx": str(fp32), "onnx-int8": untrained_onnx}, texts, labels, max_length=32)
    assert reference["accuracy"] - worse["onnx-int8"]["accuracy"] > INT8_TOLERANCE
    assert not worse["onnx-int8"]["passed"] and worse["onnx"]["passed"]
    assert choose_backend(worse)[0] == "onnx"


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
