import numpy as np
import pytest
import torch

from steps.errors import ReviewflowError
from steps.models import load_classifier
from steps.split import split_reviews
from steps.tokenize import tokenize_split
from steps.train import TrainConfig, linear_warmup_decay, train_classifier
from tests.fixtures import review_frame


@pytest.fixture(scope="module")
def tiny_tokens(tiny_tokenizer):
    parts = split_reviews(review_frame(300), seed=0)
    return tokenize_split(parts.frames(), tiny_tokenizer, max_length=32)


def test_tiny_model_learns_the_sentiment_words(tiny_model_dir, tiny_tokens):
    model = load_classifier(str(tiny_model_dir))
    steps_seen = []
    result = train_classifier(model, tiny_tokens["train"], tiny_tokens["validation"],
                              TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3, seed=0),
                              on_step=lambda step, metrics: steps_seen.append((step, metrics)), log=lambda m: None)
    assert result.device == "cpu" and result.precision == "fp32"
    assert len(result.history) == 4 and result.steps == len(steps_seen)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[result.best_epoch - 1]["val_accuracy"] >= 0.9
    assert {"train_loss", "learning_rate"} <= set(steps_seen[0][1])
    assert result.samples_per_s > 0 and result.real_tokens_per_s > result.samples_per_s


def test_best_epoch_weights_are_restored(tiny_model_dir, tiny_tokens):
    """With a learning rate far too high, later epochs get worse; the best one's weights are kept."""
    model = load_classifier(str(tiny_model_dir))
    result = train_classifier(model, tiny_tokens["train"], tiny_tokens["validation"],
                              TrainConfig(epochs=3, batch_size=8, learning_rate=0.5, seed=0, patience=5),
                              log=lambda m: None)
    from steps.train import evaluate_loss

    final = evaluate_loss(model, tiny_tokens["validation"], 8, torch.device("cpu"))
    best = result.history[result.best_epoch - 1]
    assert final["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert best["val_loss"] == min(h["val_loss"] for h in result.history)


def test_warmup_then_linear_decay():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = linear_warmup_decay(optimizer, warmup_steps=10, total_steps=100)
    rates = []
    for _ in range(100):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert max(rates) == pytest.approx(1.0) and np.argmax(rates) == 9
    assert rates[55] == pytest.approx(0.5) and rates[99] == pytest.approx(1 / 90)


def test_bad_settings_are_user_errors():
    with pytest.raises(ReviewflowError, match="--epochs"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ReviewflowError, match="--batch-size"):
        TrainConfig(batch_size=0).validate()
