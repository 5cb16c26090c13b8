"""Training checkpoints kept at a location that is a local directory or an s3:// prefix.

A location holds one object, `checkpoint.pt`: the whole training state after the last finished epoch
(see steps/training/loop.py for what is in it). It is replaced atomically: locally the new state is written to a
temporary file in the same directory, flushed to disk and renamed over the old one; on S3 an object
becomes visible only once its upload has completed. A process killed in the middle of a save (kill -9,
OOM killer, preemption) therefore leaves the previous checkpoint intact, never a half-written one.

Reading can fall back to other locations (`resume_from`): a retried step reads its own run's checkpoint,
a resumed run first its own and then the checkpoint of the run it resumes. Writing always goes to
`location`. Knowing which locations belong to a flow run is the flows' business (flows/flowkit/checkpoints.py).

S3 access goes through steps/runtime/storage.py (credential chain, error messages); the endpoint is the one given
(the flow passes Metaflow's own, so checkpoints sit beside the datastore) or else storage's settings.

The trained classifier is kept the same way (`store_trained` / `trained_bytes`): one file, `classifier.tar`, in its
own folder, written atomically, and named in the train step's artifact by its path under the datastore root, its
size and SHA-256, which the reader checks. Not as a Metaflow artifact, because Metaflow gzips every artifact:
2.7 s for the default model's 91.6 MB, which it shrinks by 8% (docs/benchmarks.md); the larger encoders are 3-5x
that size.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from steps.runtime.errors import ReviewflowError

CHECKPOINT = "checkpoint.pt"
TRAINED = "classifier.tar"


class _LocalFolder:
    def __init__(self, path: str, name: str = CHECKPOINT):
        self.path, self.name = Path(path).expanduser(), name

    def write(self, save) -> None:
        """`save(file)` writes into a temporary file that then atomically replaces the file `name`."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{self.name}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                save(file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.path / self.name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def read(self, load):
        target = self.path / self.name
        if not target.is_file():
            return None
        with open(target, "rb") as file:
            return load(file)

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


class _S3Prefix:
    def __init__(self, url: str, endpoint_url: str | None = None, name: str = CHECKPOINT):
        from steps.runtime.storage import parse_s3

        location = parse_s3(url)
        self.url, self.bucket = url, location.bucket
        self.key = f"{location.key.rstrip('/')}/{name}".lstrip("/")
        self.endpoint_url = endpoint_url
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from steps.runtime.storage import s3_client

            self._client = s3_client(self.endpoint_url)
        return self._client

    def write(self, save) -> None:
        from steps.runtime.storage import guarded

        with tempfile.TemporaryFile() as file, guarded(self.url):
            save(file)
            file.flush()
            file.seek(0)
            self.client.upload_fileobj(file, self.bucket, self.key)  # visible only once complete

    def read(self, load):
        from botocore.exceptions import ClientError

        from steps.runtime.storage import guarded

        with tempfile.TemporaryFile() as file, guarded(self.url):
            try:
                self.client.download_fileobj(self.bucket, self.key, file)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            file.seek(0)
            return load(file)

    def remove(self) -> None:
        from steps.runtime.storage import guarded

        with guarded(self.url):
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


def _backend(location: str, endpoint_url: str | None = None, name: str = CHECKPOINT):
    if location.startswith("s3://"):
        return _S3Prefix(location, endpoint_url, name)
    if "://" in location:
        what = "checkpoint" if name == CHECKPOINT else "model"
        raise ReviewflowError(f"{what} location {location!r}: use a local directory or an s3:// URL")
    return _LocalFolder(location, name)


def store_trained(blob: bytes, root: str, path: str, endpoint_url: str | None = None) -> dict:
    """Keep the packed classifier `blob` (steps/training/models.py pack_directory) as `classifier.tar` in the
    folder `path` under `root` (a local directory or an s3:// prefix), atomically. Returns what finds and checks
    it again, relative to the root, so a local datastore that is moved still finds it: {"path", "file", "bytes",
    "sha256"}."""
    import hashlib

    _backend(_under(root, path), endpoint_url, TRAINED).write(lambda file: file.write(blob))
    return {"path": path, "file": TRAINED, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def trained_bytes(classifier, root: str | None = None, endpoint_url: str | None = None,
                  train_again: str = "train it again") -> bytes:
    """The packed classifier: read from where `store_trained` kept it under `root` and checked against its
    SHA-256; packed bytes as they are (a train step from before the classifier was kept beside the datastore).
    `train_again`: what the error says to do when the file is gone or changed (the flow names its command)."""
    import hashlib

    if isinstance(classifier, (bytes, bytearray)):
        return bytes(classifier)
    if not isinstance(classifier, dict) or root is None:
        raise TypeError("a trained classifier is packed bytes, or store_trained's reference read with its root")
    location = _under(root, classifier["path"])
    where = f"{location}/{classifier['file']}"
    blob = _backend(location, endpoint_url, classifier["file"]).read(lambda f: f.read())
    if blob is None:
        raise ReviewflowError(f"the trained model {where} is gone (deleted or moved since its train step stored "
                              f"it): {train_again}")
    if hashlib.sha256(blob).hexdigest() != classifier["sha256"]:
        raise ReviewflowError(f"the trained model {where} is not the one its train step stored (its SHA-256 "
                              f"differs: changed or overwritten since): {train_again}")
    return blob


def _under(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{path.strip('/')}"


class CheckpointStore:
    """Save and load one training job's latest checkpoint (a dict of tensors and plain values)."""

    def __init__(self, location: str, resume_from: list[str] | tuple[str, ...] = (), endpoint_url: str | None = None):
        self.location = location
        self.resume_from = [loc for loc in resume_from if loc and loc != location]
        self._endpoint_url = endpoint_url
        self._writer = _backend(location, endpoint_url)

    def save(self, state: dict) -> None:
        import torch

        self._writer.write(lambda file: torch.save(state, file))

    def load(self) -> tuple[dict, str] | None:
        """The newest checkpoint and where it was found: this location first, then `resume_from` in order."""
        import torch

        def load(file):
            return torch.load(file, map_location="cpu", weights_only=True)

        for location in [self.location, *self.resume_from]:
            backend = self._writer if location == self.location else _backend(location, self._endpoint_url)
            state = backend.read(load)
            if state is not None:
                return state, location
        return None

    def clear(self) -> None:
        """Delete this location's checkpoint (locations in `resume_from` belong to other runs: kept)."""
        self._writer.remove()

    def __repr__(self) -> str:
        return f"CheckpointStore({self.location!r}, resume_from={self.resume_from!r})"
