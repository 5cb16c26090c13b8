import numpy as np
import pytest
import torch

from steps.data.split import split_reviews
from steps.runtime.errors import ReviewflowError
from steps.training.batching import collate
from steps.training.checkpoints import CheckpointStore
from steps.training.config import TrainConfig
from steps.training.device import seed_everything
from steps.training.loop import train_classifier
from steps.training.models import load_classifier
from steps.training.setup import inverse_frequency_weights, linear_warmup_decay
from steps.training.tokenize import tokenize_split
from steps.training.validation import evaluate_loss
from tests.fixtures import review_frame


@pytest.fixture(scope="module")
def tiny_tokens(tiny_tokenizer):
    parts = split_reviews(review_frame(300), seed=0)
    return tokenize_split(parts.frames(), tiny_tokenizer, max_length=32)


def fresh_model(model_dir, seed=0, dropout=True):
    seed_everything(seed)
    model = load_classifier(str(model_dir))
    if not dropout:  # makes two ways of computing the same update comparable (no random masks)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def quiet(message):
    pass


def weights_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tiny_model_learns_the_sentiment_words(tiny_model_dir, tiny_tokens):
    model = fresh_model(tiny_model_dir)
    steps_seen = []
    result = train_classifier(model, tiny_tokens["train"], tiny_tokens["validation"],
                              TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3, seed=0),
                              on_step=lambda step, metrics: steps_seen.append((step, metrics)), log=quiet)
    assert result.device == "cpu" and result.precision == "fp32" and result.attention == "sdpa"
    assert len(result.history) == 4 and result.steps == len(steps_seen) == 4 * 14
    assert [s for s, _ in steps_seen] == list(range(1, result.steps + 1))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[result.best_epoch - 1]["val_accuracy"] >= 0.9
    assert {"train_loss", "learning_rate", "micro_batch_size"} <= set(steps_seen[0][1])
    assert result.samples_per_s > 0 and result.real_tokens_per_s > result.samples_per_s
    assert 0 <= result.padding_share < 0.2  # bucketed batches pad little
    assert (result.micro_batch_size, result.grad_accum, result.oom_backoffs) == (16, 1, 0)


@pytest.mark.parametrize("best_epoch_by", ["f1", "loss"])
def test_best_epoch_weights_are_restored(tiny_model_dir, tiny_tokens, best_epoch_by):
    """With a learning rate far too high, later epochs get worse; the best one's weights are kept: the highest
    validation F1 (ties: the lower loss), or with --best-epoch-by loss the lowest validation loss."""
    model = fresh_model(tiny_model_dir)
    messages = []
    config = TrainConfig(epochs=3, batch_size=8, learning_rate=0.5, seed=0, patience=5, best_epoch_by=best_epoch_by)
    result = train_classifier(model, tiny_tokens["train"], tiny_tokens["validation"], config, log=messages.append)
    final = evaluate_loss(model, tiny_tokens["validation"], 8, torch.device("cpu"))
    best = result.history[result.best_epoch - 1]
    assert final["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5) and final["val_f1"] == best["val_f1"]
    if best_epoch_by == "f1":
        ranked = min(result.history, key=lambda h: (-h["val_f1"], h["val_loss"]))
    else:
        ranked = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == ranked["epoch"]
    if result.best_epoch != len(result.history):
        by = "validation F1, then loss" if best_epoch_by == "f1" else "validation loss"
        assert any(m.startswith(f"restoring the weights of epoch {result.best_epoch} (the best {by}") for m in messages)


def test_validation_f1_is_the_positive_class_f1(tiny_model_dir, tiny_tokens):
    """The engine's validation F1 (what --best-epoch-by f1 ranks) is scikit-learn's F1 of label 1, as the gate's."""
    from sklearn.metrics import accuracy_score, f1_score

    model = fresh_model(tiny_model_dir)
    train_classifier(model, tiny_tokens["train"], None, TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3,
                                                                    seed=0), log=quiet)
    validation = tiny_tokens["validation"]
    figures = evaluate_loss(model, validation, 8, torch.device("cpu"))
    ids, mask, _ = collate(validation, np.arange(len(validation)), torch.device("cpu"))
    with torch.inference_mode():
        predicted = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).numpy()
    assert 0 < predicted.sum() < len(predicted)  # both classes predicted: F1 is not a degenerate 0 or 1
    assert figures["val_f1"] == pytest.approx(f1_score(validation.labels, predicted), abs=1e-12)
    assert figures["val_accuracy"] == pytest.approx(accuracy_score(validation.labels, predicted), abs=1e-12)


def test_best_epoch_score_ranks_a_nan_loss_last_and_falls_back_to_loss_without_a_positive_class(tiny_model_dir,
                                                                                                  tiny_tokens):
    """The ranking itself: F1 first, the lower loss on a tie, a NaN loss worst; a model with three labels has no
    positive class to score, so its epochs are ranked (and its card labelled) by the loss alone."""
    from steps.training.loop import Trainer

    trainer = Trainer(fresh_model(tiny_model_dir), tiny_tokens["train"], tiny_tokens["validation"],
                      TrainConfig(epochs=1, batch_size=16, seed=0), log=quiet)
    score = trainer.score
    assert score({"epoch": 2, "val_loss": 0.5, "val_f1": 0.9}) < score({"epoch": 1, "val_loss": 0.3, "val_f1": 0.8})
    assert score({"epoch": 2, "val_loss": 0.3, "val_f1": 0.8}) < score({"epoch": 1, "val_loss": 0.4, "val_f1": 0.8})
    assert score({"epoch": 2, "val_loss": 9.0, "val_f1": 0.8}) < score({"epoch": 1, "val_loss": float("nan"),
                                                                        "val_f1": 0.8})
    assert trainer.selection == "validation F1, then loss"

    from transformers import AutoModelForSequenceClassification

    seed_everything(0)
    three = AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir), num_labels=3,
                                                               ignore_mismatched_sizes=True)
    assert three.config.num_labels == 3
    figures = evaluate_loss(three, tiny_tokens["validation"], 8, torch.device("cpu"))
    assert "val_f1" not in figures and {"val_loss", "val_accuracy"} <= set(figures)
    trainer = Trainer(three, tiny_tokens["train"], tiny_tokens["validation"],
                      TrainConfig(epochs=1, batch_size=16, seed=0), log=quiet)
    assert trainer.selection == "validation loss"
    assert trainer.score({"epoch": 1, **figures}) == [figures["val_loss"]]


def test_early_stopping_after_patience_epochs_without_improvement(tiny_model_dir, tiny_tokens):
    """Validation labels are flipped: the better the model learns the training labels, the worse val_loss gets."""
    flipped = tiny_tokens["validation"].subset(np.arange(len(tiny_tokens["validation"])))
    flipped.labels = 1 - flipped.labels
    messages = []
    result = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], flipped,
                              TrainConfig(epochs=10, batch_size=16, learning_rate=3e-3, seed=0, patience=2,
                                          best_epoch_by="loss"), log=messages.append)
    losses = [h["val_loss"] for h in result.history]
    assert result.stopped_early and len(result.history) == result.best_epoch + 2 < 10
    assert all(loss >= losses[result.best_epoch - 1] for loss in losses[result.best_epoch:])
    assert any("early stopping" in m for m in messages)
    assert any(f"restoring the weights of epoch {result.best_epoch}" in m for m in messages)

    never = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], flipped,
                             TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3, seed=0, patience=0), log=quiet)
    assert len(never.history) == 4 and not never.stopped_early


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


def test_engine_warms_up_over_ten_percent_of_steps_by_default(tiny_model_dir, tiny_tokens):
    rates = {}
    result = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                              TrainConfig(epochs=3, batch_size=8, learning_rate=1e-3, seed=0),
                              on_step=lambda step, m: rates.__setitem__(step, m["learning_rate"]), log=quiet)
    total = result.steps
    assert total == 3 * 27 and len(result.history) == 3  # no validation set: every epoch runs, the last is kept
    warmup = int(0.1 * total)
    assert np.argmax([rates[s] for s in range(1, total + 1)]) + 1 == warmup
    assert rates[1] == pytest.approx(1e-3 / warmup) and rates[warmup] == pytest.approx(1e-3)
    assert rates[total] == pytest.approx(1e-3 / (total - warmup))


@pytest.mark.parametrize("class_weights", ["none", "auto"])
def test_accumulation_gives_the_same_update_as_one_big_batch(tiny_model_dir, tiny_tokens, class_weights):
    """batch 4 x accumulation 4 == batch 16: same rows per optimizer step, same loss normalisation."""
    trained = {}
    for batch, accum in ((16, 1), (4, 4)):
        model = fresh_model(tiny_model_dir, dropout=False)
        config = TrainConfig(epochs=1, batch_size=batch, grad_accum=accum, learning_rate=1e-3, seed=0,
                             class_weights=class_weights)
        result = train_classifier(model, tiny_tokens["train"], None, config, log=quiet)
        assert (result.micro_batch_size, result.grad_accum, result.steps) == (batch, accum, 14)
        trained[(batch, accum)] = weights_of(model)
    before = weights_of(fresh_model(tiny_model_dir))
    one, accumulated = trained[(16, 1)], trained[(4, 4)]
    assert any(not torch.equal(before[k], one[k]) for k in one)  # training did move the weights
    for key in one:
        torch.testing.assert_close(accumulated[key], one[key], rtol=1e-4, atol=1e-6)


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_schedule(tiny_model_dir, tiny_tokens):
    """Simulated CUDA OOM at step 3 (micro-batch 16) and step 5 (micro-batch 8): training goes on with micro-batch
    4 x accumulation 4; the same steps, learning rates and (without dropout) weights as a run that never ran out."""
    def run(before_micro_batch=None):
        model, rates, messages = fresh_model(tiny_model_dir, dropout=False), {}, []
        result = train_classifier(model, tiny_tokens["train"], None,
                                  TrainConfig(epochs=2, batch_size=16, learning_rate=1e-3, seed=0),
                                  on_step=lambda step, m: rates.__setitem__(step, m["learning_rate"]),
                                  log=messages.append, before_micro_batch=before_micro_batch)
        return model, result, rates, messages

    def out_of_memory(step, rows):
        if (step, rows) in ((3, 16), (5, 8)):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    reference, reference_result, reference_rates, _ = run()
    model, result, rates, messages = run(out_of_memory)
    assert result.oom_backoffs == 2 and (result.micro_batch_size, result.grad_accum) == (4, 4)
    assert result.oom_events == [{"epoch": 1, "step": 3, "from": 16, "to": 8},
                                 {"epoch": 1, "step": 5, "from": 8, "to": 4}]  # what the train card lists
    micro = dict(zip(result.step_history["step"], result.step_history["micro_batch_size"]))
    assert (micro[2], micro[3], micro[4], micro[5], micro[result.steps]) == (16, 8, 8, 4, 4)
    assert result.steps == reference_result.steps and rates == reference_rates
    backoffs = [m for m in messages if m.startswith("out of memory")]
    assert len(backoffs) == 2
    assert "step 3 with micro-batch 16: continuing with micro-batch 8 x 2 accumulation" in backoffs[0]
    assert "micro-batch 4 x 4 accumulation (effective batch 16" in backoffs[1]
    expected = weights_of(reference)
    for key, value in weights_of(model).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-4, atol=1e-6)


def test_out_of_memory_with_one_review_is_a_clear_error(tiny_model_dir, tiny_tokens):
    def always(step, rows):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(ReviewflowError, match="micro-batch of 1 review.*--max-length"):
        train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                         TrainConfig(epochs=1, batch_size=4, seed=0), log=quiet, before_micro_batch=always)


def test_other_errors_are_not_taken_for_out_of_memory(tiny_model_dir, tiny_tokens):
    def broken(step, rows):
        raise RuntimeError("CUDA error: device-side assert triggered")

    with pytest.raises(RuntimeError, match="device-side assert"):
        train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                         TrainConfig(epochs=1, batch_size=4, seed=0), log=quiet, before_micro_batch=broken)


class Interrupted(Exception):
    pass


def test_resuming_from_a_checkpoint_continues_bit_identically(tiny_model_dir, tiny_tokens, tmp_path):
    """Killed after epoch 2 of 4, restarted with a new process's model (another head init): the same weights, to the
    bit, and the same history as a run that was never interrupted. Dropout is on, so RNG state matters."""
    config = TrainConfig(epochs=4, batch_size=16, learning_rate=3e-3, seed=0, patience=4)
    uninterrupted = fresh_model(tiny_model_dir)
    expected = train_classifier(uninterrupted, tiny_tokens["train"], tiny_tokens["validation"], config, log=quiet)

    store = CheckpointStore(str(tmp_path / "run-1" / "train"))

    def interrupt(epoch):
        if epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], tiny_tokens["validation"], config,
                         log=quiet, checkpoints=store, after_epoch=interrupt)
    assert store.load()[0]["state"]["epoch"] == 2

    messages = []
    resumed_model = fresh_model(tiny_model_dir, seed=123)
    resumed = train_classifier(resumed_model, tiny_tokens["train"], tiny_tokens["validation"], config,
                               log=messages.append, checkpoints=store)
    assert any(m.startswith("resuming from checkpoint epoch 2") for m in messages)
    assert resumed.resumed_from_epoch == 2 and resumed.steps == expected.steps
    assert resumed.resumed_at_step == expected.steps // 2
    timing = ("epoch_seconds", "epoch_samples_per_s")
    drop_time = [{k: v for k, v in h.items() if k not in timing} for h in expected.history]
    assert [{k: v for k, v in h.items() if k not in timing} for h in resumed.history] == drop_time
    assert resumed.step_history == expected.step_history  # the per-step curve survives the restart too
    assert resumed.best_epoch == expected.best_epoch
    reference = weights_of(uninterrupted)
    for key, value in weights_of(resumed_model).items():
        assert torch.equal(value, reference[key]), key


def test_a_finished_job_resumed_again_restores_its_best_epoch(tiny_model_dir, tiny_tokens, tmp_path):
    """Early-stopped, then run again on the same checkpoint (e.g. a retry after a crash while saving the model):
    no more epochs, the best epoch's weights, taken from the checkpoint."""
    flipped = tiny_tokens["validation"].subset(np.arange(len(tiny_tokens["validation"])))
    flipped.labels = 1 - flipped.labels
    config = TrainConfig(epochs=10, batch_size=16, learning_rate=3e-3, seed=0, patience=1)
    store = CheckpointStore(str(tmp_path / "train"))
    first_model = fresh_model(tiny_model_dir)
    first = train_classifier(first_model, tiny_tokens["train"], flipped, config, log=quiet, checkpoints=store)
    assert first.stopped_early and first.best_epoch < len(first.history)
    again_model = fresh_model(tiny_model_dir, seed=7)
    again = train_classifier(again_model, tiny_tokens["train"], flipped, config, log=quiet, checkpoints=store)
    assert again.history == first.history and again.steps == first.steps
    best = weights_of(first_model)
    assert all(torch.equal(v, best[k]) for k, v in weights_of(again_model).items())


def test_a_checkpoint_of_other_settings_is_ignored(tiny_model_dir, tiny_tokens, tmp_path):
    store = CheckpointStore(str(tmp_path / "train"))
    train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                     TrainConfig(epochs=1, batch_size=16, seed=0), log=quiet, checkpoints=store)
    messages = []
    result = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                              TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3, seed=0),
                              log=messages.append, checkpoints=store)
    assert result.resumed_from_epoch == 0 and len(result.history) == 1
    assert any("ignoring the checkpoint" in m and "learning_rate" in m for m in messages)
    # another --best-epoch-by: the checkpoint's best-so-far epoch was picked by the other figure
    messages = []
    train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                     TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3, seed=0, best_epoch_by="loss"),
                     log=messages.append, checkpoints=store)
    assert any("ignoring the checkpoint" in m and "best_epoch_by" in m for m in messages)


def test_a_checkpoint_that_cannot_be_saved_does_not_stop_training(tiny_model_dir, tiny_tokens, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoint directory should be")
    messages = []
    result = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                              TrainConfig(epochs=2, batch_size=16, seed=0), log=messages.append,
                              checkpoints=CheckpointStore(str(blocker / "train")))
    assert len(result.history) == 2
    failures = [m for m in messages if m.startswith("could not save the checkpoint of epoch")]
    assert len(failures) == 2 and "training goes on" in failures[0]


def test_class_weights_auto_are_inverse_frequency_and_logged(tiny_model_dir, tiny_tokens):
    labels = tiny_tokens["train"].labels
    weights = inverse_frequency_weights(labels, 2)
    counts = np.bincount(labels)
    assert weights == pytest.approx([len(labels) / (2 * counts[0]), len(labels) / (2 * counts[1])], rel=1e-5)
    assert weights[0] > 1 > weights[1]  # 40% negative reviews weigh more than 60% positive ones
    messages = []
    result = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], tiny_tokens["validation"],
                              TrainConfig(epochs=1, batch_size=16, seed=0, class_weights="auto"), log=messages.append)
    assert result.class_weights == weights
    assert any(m.startswith("class weights (inverse frequency): negative") for m in messages)
    with pytest.raises(ReviewflowError, match="no reviews of class"):
        inverse_frequency_weights(np.ones(10, dtype=np.int64), 2)


def test_freeze_encoder_trains_only_the_classification_head(tiny_model_dir, tiny_tokens):
    model = fresh_model(tiny_model_dir)
    before = weights_of(model)
    messages = []
    result = train_classifier(model, tiny_tokens["train"], None,
                              TrainConfig(epochs=1, batch_size=16, learning_rate=1e-2, seed=0, freeze_encoder=True),
                              log=messages.append)
    after = weights_of(model)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(not k.startswith("distilbert.") for k in changed)
    assert {"classifier.weight", "pre_classifier.weight"} <= changed
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("distilbert."))
    assert result.trainable_parameters == head
    assert any(m.startswith("--freeze-encoder: training only the classification head") for m in messages)


def test_progress_lines_in_logs(tiny_model_dir, tiny_tokens, monkeypatch):
    """lines (a flow launched from a terminal): a line per REVIEWFLOW_PROGRESS_SECONDS, here 0 = every update;
    quiet (CI, cron): only the line that closes each epoch."""
    monkeypatch.setenv("REVIEWFLOW_PROGRESS_SECONDS", "0")
    messages = []
    train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                     TrainConfig(epochs=1, batch_size=16, seed=0), log=messages.append, progress="lines")
    lines = [m for m in messages if m.startswith("train epoch 1/1")]
    assert len(lines) == 14 and lines[-1].startswith("train epoch 1/1  100% 14/14 steps  loss ")
    assert all("loss" in m and "samples/s" in m and "ETA" in m for m in lines)
    epoch_line = [m for m in messages if m.startswith("epoch 1/1: train_loss")]
    assert len(epoch_line) == 1 and "samples/s" in epoch_line[0]
    quiet_messages = []
    train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                     TrainConfig(epochs=1, batch_size=16, seed=0), log=quiet_messages.append, progress="quiet")
    assert not any(m.startswith("train epoch") for m in quiet_messages)
    assert any(m.startswith("epoch 1/1: train_loss") for m in quiet_messages)


def test_bad_settings_are_user_errors():
    for config, flag in [(TrainConfig(epochs=-1), "--epochs"), (TrainConfig(batch_size=0), "--batch-size"),
                         (TrainConfig(grad_accum=0), "--grad-accum"), (TrainConfig(patience=-1), "--patience"),
                         (TrainConfig(warmup_ratio=1.0), "--warmup-ratio"),
                         (TrainConfig(class_weights="balanced"), "--class-weights"),
                         (TrainConfig(precision="fp8"), "--precision")]:
        with pytest.raises(ReviewflowError, match=flag):
            config.validate()


def test_bf16_autocast_on_cpu_when_asked(tiny_model_dir, tiny_tokens):
    result = train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], tiny_tokens["validation"],
                              TrainConfig(epochs=1, batch_size=16, seed=0, precision="bf16"), log=quiet)
    assert result.precision == "bf16" and np.isfinite(result.history[0]["val_loss"])
    with pytest.raises(ReviewflowError, match="fp16 needs a CUDA GPU"):
        train_classifier(fresh_model(tiny_model_dir), tiny_tokens["train"], None,
                         TrainConfig(epochs=1, precision="fp16", device="cpu"), log=quiet)
