"""`--max-steps`: a training budget in optimizer steps. The learning-rate schedule ends at the budget, the epoch it
falls in ends there (validated and checkpointed like any epoch), and a resumed run keeps to the same budget; a
checkpoint made under another budget is not continued."""
import pytest

from steps import settings
from steps.data.split import split_reviews
from steps.runtime.errors import ReviewflowError
from steps.training.checkpoints import CheckpointStore
from steps.training.config import TrainConfig
from steps.training.device import seed_everything
from steps.training.loop import train_classifier
from steps.training.models import load_classifier
from steps.training.tokenize import tokenize_split
from tests.fixtures import review_frame


@pytest.fixture(scope="module")
def tokens(tiny_tokenizer):
    parts = split_reviews(review_frame(300), seed=0)
    return tokenize_split(parts.frames(), tiny_tokenizer, max_length=32)


def train(model_dir, tokens, checkpoints=None, after_epoch=None, log=None, progress="quiet", **config):
    seed_everything(0)
    values = {"epochs": 3, "batch_size": 16, "learning_rate": 8e-3, "seed": 0, "patience": 0, **config}
    return train_classifier(load_classifier(str(model_dir)), tokens["train"], tokens["validation"],
                            TrainConfig(**values), log=log or (lambda _: None), checkpoints=checkpoints,
                            after_epoch=after_epoch, progress=progress)


def steps_per_epoch(tokens) -> int:
    return -(-len(tokens["train"]) // 16)


def test_a_budget_inside_the_first_epoch_ends_it_there_validated_with_the_schedule_run_out(tiny_model_dir, tokens,
                                                                                         monkeypatch):
    budget = steps_per_epoch(tokens) // 2
    messages = []
    monkeypatch.setenv("REVIEWFLOW_PROGRESS_SECONDS", "0")  # a progress line at every update
    result = train(tiny_model_dir, tokens, max_steps=budget, log=messages.append, progress="lines")
    assert result.steps == budget and len(result.history) == 1 and result.budget_reached
    assert "val_loss" in result.history[0]  # the cut epoch is validated like any other
    rates = result.step_history["learning_rate"]
    assert len(rates) == budget and rates[-1] < 0.2 * max(rates)  # the decay ends at the budget, not at 3 epochs
    assert any(m.startswith(f"step budget reached: {budget} optimizer steps (--max-steps) in epoch 1 of 3")
               for m in messages)
    assert any("(the --max-steps budget)" in m for m in messages)
    progress = [m for m in messages if m.startswith("train epoch 1/3 ")]
    assert progress and all(f"/{budget} steps" in m for m in progress)  # counts to the budget, not the epoch
    assert any(m.startswith(f"validation: {len(tokens['validation'])} reviews in ") for m in messages)


def test_a_budget_across_epochs_runs_the_full_ones_and_cuts_the_last(tiny_model_dir, tokens):
    from flowkit.cards.training import training_card

    per_epoch = steps_per_epoch(tokens)
    result = train(tiny_model_dir, tokens, max_steps=per_epoch + 3)
    assert result.steps == per_epoch + 3 and len(result.history) == 2 and result.budget_reached
    assert result.history[1]["epoch_samples_per_s"] > 0
    card = "\n".join(part.render().get("source", "") for part in training_card(result, TrainConfig(
        epochs=3, max_steps=per_epoch + 3), {}))
    assert f"stopped at the step budget (--max-steps {per_epoch + 3})" in card


def test_a_budget_on_an_epochs_end_says_so_and_one_above_the_epochs_resumes_an_unbudgeted_checkpoint(
        tiny_model_dir, tokens, tmp_path):
    per_epoch, messages = steps_per_epoch(tokens), []
    result = train(tiny_model_dir, tokens, max_steps=per_epoch, log=messages.append)
    assert result.steps == per_epoch and len(result.history) == 1 and result.budget_reached
    assert f"step budget reached: {per_epoch} optimizer steps (--max-steps) in epoch 1 of 3, at its end" in messages

    def crash(epoch):
        raise RuntimeError("killed")

    store = CheckpointStore(str(tmp_path / "train"))
    with pytest.raises(RuntimeError):
        train(tiny_model_dir, tokens, checkpoints=store, after_epoch=crash)  # no budget
    resumed = train(tiny_model_dir, tokens, checkpoints=store, max_steps=10_000)  # a budget that changes nothing
    assert resumed.resumed_from_epoch == 1 and not resumed.budget_reached


def test_a_budget_larger_than_the_epochs_changes_nothing(tiny_model_dir, tokens):
    unbudgeted, generous = train(tiny_model_dir, tokens, epochs=1), train(tiny_model_dir, tokens, epochs=1,
                                                                          max_steps=10_000)
    assert generous.steps == unbudgeted.steps == steps_per_epoch(tokens) and not generous.budget_reached
    timing = ("epoch_samples_per_s", "epoch_seconds")
    assert [{k: v for k, v in h.items() if k not in timing} for h in generous.history] == [
        {k: v for k, v in h.items() if k not in timing} for h in unbudgeted.history]


def test_a_killed_budgeted_run_resumes_to_the_same_budget_and_the_same_losses(tiny_model_dir, tokens, tmp_path):
    budget = steps_per_epoch(tokens) + 4
    whole = train(tiny_model_dir, tokens, max_steps=budget)

    def crash(epoch):
        if epoch == 1:
            raise RuntimeError("killed after epoch 1")

    store = CheckpointStore(str(tmp_path / "train"))
    with pytest.raises(RuntimeError, match="killed after epoch 1"):
        train(tiny_model_dir, tokens, checkpoints=store, after_epoch=crash, max_steps=budget)
    resumed = train(tiny_model_dir, tokens, checkpoints=store, max_steps=budget)
    assert resumed.resumed_from_epoch == 1 and resumed.steps == budget and resumed.budget_reached
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
    messages = []
    other = train(tiny_model_dir, tokens, checkpoints=CheckpointStore(str(tmp_path / "train")), max_steps=budget + 1,
                  log=messages.append)
    assert other.resumed_from_epoch == 0 and any("max_steps" in m for m in messages)  # another budget: from 0


def test_the_budget_is_a_training_setting_checked_like_the_others():
    assert settings.setting("max-steps").training_input and settings.setting("max-steps").group == "training"
    settings.check({"max-steps": 0})
    with pytest.raises(ReviewflowError, match=r"--max-steps must be at least 1 \(or 0 = no budget\), got -5"):
        settings.check({"max-steps": -5})
