"""A real ReviewFlow run whose train step fails after epoch 2: @retry continues from the epoch-2 checkpoint."""
from pathlib import Path

import pytest
from metaflow import Task

from tests.flow_runs import TINY_TRAINING, card_components, run_flow

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def retried(tmp_path_factory, tiny_model_dir):
    from tests.fixtures import write_reviews_csv

    workdir = tmp_path_factory.mktemp("retried-flow")
    data = write_reviews_csv(workdir / "reviews.csv", rows=240)
    run, executing = run_flow("review_flow.py", workdir, env={"REVIEWFLOW_FAIL_AFTER_EPOCH": "2"}, data=str(data),
                              model=str(tiny_model_dir), seed=3, **{**TINY_TRAINING, "patience": 4})
    assert executing.status == "successful", executing.stderr
    return run, workdir


def test_the_retry_resumes_from_the_last_epoch_checkpoint(retried):
    run, workdir = retried
    train = run["train"].task
    assert train.current_attempt == 1
    first = Task(train.pathspec, attempt=0)
    assert "REVIEWFLOW_FAIL_AFTER_EPOCH=2: failing after epoch 2" in first.stdout
    assert "checkpoint of epoch 2 saved to " in first.stdout
    assert "resuming from checkpoint epoch 2" in train.stdout
    assert "epoch 1/4:" not in train.stdout and "epoch 3/4:" in train.stdout
    summary = run.data.train_summary
    assert summary["resumed_from_epoch"] == 2 and summary["epochs_run"] == 4
    location = Path(train.stdout.split("checkpoint of epoch 4 saved to ")[1].split(" (")[0])
    assert location.parts[-4:] == ("reviewflow-checkpoints", "ReviewFlow", run.id, "train")
    assert not location.exists()  # cleared once the trained model was stored as the step's artifact
    card = "\n".join(c["source"] for c in card_components(train, "training") if c["type"] == "markdown")
    assert "**Resumed**: epochs 1-2 (" in card and "this attempt trained epochs 3-4" in card


def test_the_retried_training_equals_an_uninterrupted_one(retried, tiny_model_dir):
    """Same seed, same data, same settings, trained here in one go: the same history to the last bit."""
    from steps.models import load_classifier
    from steps.train import TrainConfig, seed_everything, train_classifier

    run, _ = retried
    tokens = run.data.tokens
    seed_everything(3)
    model = load_classifier(str(tiny_model_dir))
    config = TrainConfig(epochs=TINY_TRAINING["epochs"], batch_size=TINY_TRAINING["batch_size"],
                         learning_rate=TINY_TRAINING["learning_rate"], seed=3, patience=4)
    expected = train_classifier(model, tokens["train"], tokens["validation"], config, log=lambda m: None)

    def without_time(history):
        return [{k: v for k, v in epoch.items() if k not in ("epoch_seconds", "epoch_samples_per_s")}
                for epoch in history]

    assert without_time(run.data.history) == without_time(expected.history)
    assert run.data.step_history == expected.step_history  # per-step curve: epochs 1-2 from the checkpoint
