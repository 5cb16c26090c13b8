"""Card content and plots, built from real training and evaluation results (no flow run needed)."""
import struct

import numpy as np
import pytest
import torch

from flowkit.cards.evaluation import evaluation_card
from flowkit.cards.training import training_card
from steps.data.split import split_reviews
from steps.training.checkpoints import CheckpointStore
from steps.training.config import TrainConfig
from steps.training.device import seed_everything
from steps.training.loop import train_classifier
from steps.training.models import load_classifier
from steps.training.plots import training_plots
from steps.training.tokenize import encode, tokenize_split
from tests.fixtures import review_frame


def png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", png[16:24])


def rendered(parts) -> list[dict]:
    return [part.render() for part in parts]


def markdown(components) -> str:
    return "\n".join(c["source"] for c in components if c["type"] == "markdown")


@pytest.fixture(scope="module")
def tiny_tokens(tiny_tokenizer):
    parts = split_reviews(review_frame(300), seed=0)
    return tokenize_split(parts.frames(), tiny_tokenizer, max_length=32, progress_mode="quiet")


def test_the_train_card_shows_resumed_epochs_oom_backoffs_and_the_curves(tiny_model_dir, tiny_tokens, tmp_path):
    """A real run that ran out of memory at step 3 (simulated), was killed after epoch 1 and resumed from its
    checkpoint: the card says so, and the plots are laptop-sized PNGs."""
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, seed=0)
    store = CheckpointStore(str(tmp_path / "train"))

    def out_of_memory(step, rows):
        if (step, rows) == (3, 16):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    def killed(epoch):
        raise KeyboardInterrupt

    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(load_classifier(str(tiny_model_dir)), tiny_tokens["train"], tiny_tokens["validation"],
                         config, log=lambda m: None, checkpoints=store, after_epoch=killed,
                         before_micro_batch=out_of_memory)
    seed_everything(1)
    result = train_classifier(load_classifier(str(tiny_model_dir)), tiny_tokens["train"], tiny_tokens["validation"],
                              config, log=lambda m: None, checkpoints=store)
    assert result.resumed_from_epoch == 1 and len(result.history) == 2

    plots = training_plots(result)
    assert sorted(plots) == ["training_epochs.png", "training_steps.png"]
    assert png_size(plots["training_epochs.png"]) == (800, 360)
    assert png_size(plots["training_steps.png"]) == (800, 520)

    components = rendered(training_card(result, config, plots))
    text = markdown(components)
    assert text.startswith("# Training: 2 of 2 epoch(s) on cpu (fp32)")
    assert f"**Resumed**: epoch 1 ({result.resumed_at_step} steps) came from the checkpoint" in text
    assert "this attempt trained epoch 2" in text
    best = result.history[result.best_epoch - 1]
    assert (f"best epoch **{result.best_epoch}** by validation F1, then loss (F1 {best['val_f1']:.4f}, loss "
            f"{best['val_loss']:.4f}" in text)
    assert "validation F1" in [c for c in components if c["type"] == "table" and "training loss" in c["columns"]][0][
        "columns"]
    assert "## Out-of-memory back-offs: 1" in text
    oom = [c for c in components if c["type"] == "table" and "micro-batch before" in c["columns"]]
    assert oom[0]["data"] == [[1, 3, 16, 8]]
    epochs = [c for c in components if c["type"] == "table" and "training loss" in c["columns"]][0]["data"]
    assert [row[0] for row in epochs] == [1, 2] and "from checkpoint" in epochs[0][-1]
    assert float(epochs[0][1]) == pytest.approx(result.history[0]["train_loss"], abs=1e-4)
    images = [c for c in components if c["type"] == "image"]
    assert [c["label"] for c in images] == ["training epochs", "training steps"]
    assert "learning_rate `0.003`" in text and "effective_batch `16`" in text


def test_a_fresh_run_is_said_to_have_started_from_scratch(tiny_model_dir, tiny_tokens):
    config = TrainConfig(epochs=1, batch_size=16, seed=0)
    seed_everything(0)
    result = train_classifier(load_classifier(str(tiny_model_dir)), tiny_tokens["train"], None, config,
                              log=lambda m: None)
    text = markdown(rendered(training_card(result, config, training_plots(result))))
    assert "Started from scratch" in text and "No out-of-memory back-offs." in text
    assert "best epoch **1**" in text and "samples/s" in text


def test_most_confident_errors_by_hand():
    from steps.evaluation.metrics import most_confident_errors

    texts = ["a", "b", "c", "d", "e"]
    labels = [1, 0, 1, 0, 1]
    probs = [0.9, 0.95, 0.2, 0.6, 0.45]  # wrong: b (said positive, 0.95), c (negative, 0.8), d (0.6), e (0.55)
    errors = most_confident_errors(texts, labels, probs, n=3)
    assert [e["text"] for e in errors] == ["b", "c", "d"]
    assert [e["confidence"] for e in errors] == [0.95, 0.8, 0.6]
    assert errors[1] == {"row": 2, "text": "c", "label": 1, "predicted": 0, "probability_positive": 0.2,
                         "confidence": 0.8}
    assert most_confident_errors(texts, [1, 1, 0, 1, 0], probs) == []  # all right: nothing to show


def test_the_evaluate_card_lists_the_most_confident_errors_with_their_text(tiny_model_dir, tiny_tokenizer):
    from steps.evaluation.evaluate import evaluate_predictions, predict_proba

    rows = review_frame(60, seed=3)
    tokens = encode(rows["reviewText"].tolist(), rows["isPositive"].to_numpy(), tiny_tokenizer, max_length=32)
    seed_everything(0)
    probs = predict_proba(load_classifier(str(tiny_model_dir)), tokens)  # untrained: errors
    evaluation = evaluate_predictions(tokens.labels, probs, tokens.lengths, rows)
    errors = evaluation.confident_errors
    wrong = int(((evaluation.probabilities >= 0.5).astype(int) != rows["isPositive"].to_numpy()).sum())
    assert len(errors) == min(10, wrong) > 0
    assert [e["confidence"] for e in errors] == sorted((e["confidence"] for e in errors), reverse=True)
    assert all(rows["reviewText"].iloc[e["row"]] == e["text"] for e in errors)
    components = rendered(evaluation_card(evaluation))
    (listed,) = [c for c in components if c["type"] == "table" and "review text" in c["columns"]]
    assert [row[-1] for row in listed["data"]] == [e["text"] for e in errors]
    assert "## Most confident errors" in markdown(components)


def test_evaluation_plots_fit_a_laptop_screen():
    from steps.evaluation.plots import evaluation_plots

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = np.clip(labels * 0.4 + rng.random(200) * 0.6, 0, 1)
    history = [{"epoch": e, "train_loss": 0.7 / e, "val_loss": 0.6 / e, "val_accuracy": 0.8} for e in (1, 2, 3)]
    for name, png in evaluation_plots(labels, probs, history, rng.random(200), 1).items():
        width, height = png_size(png)
        assert 600 <= width <= 850 and 300 <= height <= 600, (name, width, height)


def test_png_of_the_step_curves_marks_out_of_memory_and_survives_a_downsampled_history():
    from steps.training.plots import step_curves

    history = {"step": list(range(2, 2001, 2)), "loss": list(np.linspace(0.7, 0.1, 1000)),
               "learning_rate": list(np.linspace(5e-5, 0, 1000)), "micro_batch_size": [16] * 1000, "stride": 2}
    png = step_curves(history, [{"epoch": 1, "step": 300, "from": 16, "to": 8}], resumed_at_step=500)
    assert png_size(png) == (800, 520)
    assert len(png) > 20_000  # two panels with curves, not an empty frame
