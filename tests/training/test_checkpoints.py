"""CheckpointStore on a local directory and on a real S3 server (SeaweedFS on 127.0.0.1)."""
import hashlib
import os

import pytest
import torch

from steps.runtime.errors import ReviewflowError
from steps.training.checkpoints import CHECKPOINT, TRAINED, CheckpointStore, store_trained, trained_bytes


def test_save_load_and_clear_locally(tmp_path):
    store = CheckpointStore(str(tmp_path / "run-2" / "train"))
    assert store.load() is None
    store.save({"epoch": 1, "weights": torch.arange(4.0)})
    store.save({"epoch": 2, "weights": torch.arange(4.0) * 2})
    state, where = store.load()
    assert where == store.location and state["epoch"] == 2 and torch.equal(state["weights"], torch.arange(4.0) * 2)
    assert sorted(os.listdir(store.location)) == [CHECKPOINT]  # one file, no temporary leftovers
    store.clear()
    assert store.load() is None and not (tmp_path / "run-2" / "train").exists()


def test_a_save_that_dies_midway_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch):
    store = CheckpointStore(str(tmp_path / "train"))
    store.save({"epoch": 1})

    def dies_midway(state, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        store.save({"epoch": 2})
    monkeypatch.undo()
    assert store.load()[0] == {"epoch": 1}
    assert os.listdir(store.location) == [CHECKPOINT]


def test_a_resumed_run_reads_its_origin_and_writes_its_own(tmp_path):
    origin = CheckpointStore(str(tmp_path / "run-1" / "train"))
    origin.save({"epoch": 3})
    resumed = CheckpointStore(str(tmp_path / "run-2" / "train"), resume_from=[origin.location])
    state, where = resumed.load()
    assert state == {"epoch": 3} and where == origin.location
    resumed.save({"epoch": 4})
    assert resumed.load() == ({"epoch": 4}, resumed.location)  # its own newer checkpoint wins
    resumed.clear()
    assert origin.load()[0] == {"epoch": 3}  # the origin run's checkpoint is not ours to delete


def test_locations_that_cannot_work_are_user_errors():
    with pytest.raises(ReviewflowError, match="local directory or an s3:// URL"):
        CheckpointStore("gs://bucket/checkpoints")
    with pytest.raises(ReviewflowError, match="no bucket name"):
        CheckpointStore("s3:///checkpoints")


def test_the_trained_classifier_is_kept_as_one_file_and_read_back_only_as_it_was_stored(tmp_path):
    blob = os.urandom(300_000)
    where = store_trained(blob, str(tmp_path / "datastore"), "models/train/7/attempt-0")
    assert where == {"path": "models/train/7/attempt-0", "file": TRAINED, "bytes": len(blob),
                     "sha256": hashlib.sha256(blob).hexdigest()}  # relative: a moved datastore still finds it
    folder = tmp_path / "datastore" / "models" / "train" / "7" / "attempt-0"
    assert os.listdir(folder) == [TRAINED]  # no temporary leftovers
    assert trained_bytes(where, str(tmp_path / "datastore")) == blob
    (tmp_path / "datastore").rename(tmp_path / "moved")
    assert trained_bytes(where, str(tmp_path / "moved")) == blob
    assert trained_bytes(blob) == blob  # a train step from before: its artifact is the packed bytes themselves

    folder = tmp_path / "moved" / "models" / "train" / "7" / "attempt-0"
    (folder / TRAINED).write_bytes(blob[:-1] + b"x")  # overwritten since
    with pytest.raises(ReviewflowError, match=f"{folder / TRAINED} is not the one its train step stored .*: do this"):
        trained_bytes(where, str(tmp_path / "moved"), train_again="do this")
    (folder / TRAINED).unlink()
    with pytest.raises(ReviewflowError, match=f"{folder / TRAINED} is gone .*: train it again"):
        trained_bytes(where, str(tmp_path / "moved"))
    with pytest.raises(ReviewflowError, match="model location 'gs://b/m': use a local directory or an s3:// URL"):
        store_trained(blob, "gs://b", "m")


@pytest.fixture
def s3_endpoint(s3_server, monkeypatch):
    """The session's real S3 server (SeaweedFS on 127.0.0.1) with a bucket `checkpoints`; its credentials set."""
    from steps.runtime.storage import s3_client

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, s3_server.env()[key])
    client = s3_client(s3_server.endpoint)
    if "checkpoints" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket="checkpoints")
    return s3_server.endpoint


def test_checkpoints_on_s3(s3_endpoint, monkeypatch):
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", s3_endpoint)
    origin = CheckpointStore("s3://checkpoints/reviewflow-checkpoints/ReviewFlow/1/train")
    assert origin.load() is None
    big = torch.randn(3_000_000)  # 12 MB: a multipart upload
    origin.save({"epoch": 1, "weights": big})
    resumed = CheckpointStore("s3://checkpoints/reviewflow-checkpoints/ReviewFlow/2/train",
                              resume_from=[origin.location], endpoint_url=s3_endpoint)
    state, where = resumed.load()
    assert where == origin.location and state["epoch"] == 1 and torch.equal(state["weights"], big)
    resumed.save({"epoch": 2})
    assert resumed.load() == ({"epoch": 2}, resumed.location)
    resumed.clear()
    assert resumed.load()[1] == origin.location


def test_the_trained_classifier_on_s3(s3_endpoint):
    blob = os.urandom(9_000_000)  # a multipart upload
    where = store_trained(blob, "s3://checkpoints/metaflow", "reviewflow-models/ReviewFlow/1/train/6/attempt-0",
                          endpoint_url=s3_endpoint)
    assert trained_bytes(where, "s3://checkpoints/metaflow", endpoint_url=s3_endpoint) == blob
    with pytest.raises(ReviewflowError, match="s3://checkpoints/elsewhere/reviewflow-models/.* is gone"):
        trained_bytes(where, "s3://checkpoints/elsewhere", endpoint_url=s3_endpoint)


def test_training_resumes_from_s3(s3_endpoint, tiny_model_dir, tiny_tokenizer):
    from steps.data.split import split_reviews
    from steps.training.config import TrainConfig
    from steps.training.device import seed_everything
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier
    from steps.training.tokenize import tokenize_split
    from tests.fixtures import review_frame

    tokens = tokenize_split(split_reviews(review_frame(120), seed=0).frames(), tiny_tokenizer, max_length=16)
    config = TrainConfig(epochs=2, batch_size=16, learning_rate=3e-3, seed=0)
    store = CheckpointStore("s3://checkpoints/engine/train", endpoint_url=s3_endpoint)

    def stop_after_first(epoch):
        raise KeyboardInterrupt

    seed_everything(0)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(load_classifier(str(tiny_model_dir)), tokens["train"], tokens["validation"], config,
                         log=lambda m: None, checkpoints=store, after_epoch=stop_after_first)
    messages = []
    result = train_classifier(load_classifier(str(tiny_model_dir)), tokens["train"], tokens["validation"], config,
                              log=messages.append, checkpoints=store)
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert any(m.startswith("resuming from checkpoint epoch 1 (s3://checkpoints/engine/train)") for m in messages)
