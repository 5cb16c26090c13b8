"""The trained classifier is a file beside the datastore, named by train's artifact: when that file is gone, the
step that needs it stops with a message that names it and the command that trains it again, and that command
works."""
import pytest

from tests.fixtures import write_reviews_csv
from tests.flow_runs import TINY_TRAINING, run_flow, runner

pytestmark = pytest.mark.flow


def test_a_kept_model_that_is_gone_stops_evaluate_with_the_command_that_trains_it_again(tiny_model_dir, tmp_path):
    data = write_reviews_csv(tmp_path / "reviews.csv", rows=200)
    first, executing = run_flow("review_flow.py", tmp_path, data=str(data), model=str(tiny_model_dir), seed=1,
                                **TINY_TRAINING)
    assert executing.status == "successful", executing.stderr
    model = tmp_path / ".metaflow" / first["train"].task.data.classifier["path"] / "classifier.tar"
    model.unlink()

    again = runner("review_flow.py", tmp_path).resume(step_to_rerun="evaluate", origin_run_id=first.id)

    assert again.status == "failed"
    out = again.stdout + again.stderr
    assert f"the trained model {model} is gone (deleted or moved since its train step stored it)" in out
    command = f"resume train --origin-run-id {again.run.id}"
    assert command in out and "Traceback" not in out  # the user's to fix: the message, not a crash
    assert out.rstrip().endswith(f"--origin-run-id {again.run.id}")  # the last line says what to do

    trained = runner("review_flow.py", tmp_path).resume(step_to_rerun="train", origin_run_id=again.run.id)

    assert trained.status == "successful", trained.stderr
    retrained = trained.run["train"].task.data.classifier
    assert retrained["path"] != first["train"].task.data.classifier["path"]  # a new model, kept by the new run
    assert (tmp_path / ".metaflow" / retrained["path"] / "classifier.tar").is_file()
