"""Where reviews come from: local files, directories, s3:// objects and prefixes, and the formats read by suffix.

Formats, by suffix: .csv, .tsv, .parquet/.pq, .jsonl/.ndjson/.json, each (except Parquet, which compresses
inside the file) optionally compressed as .gz, .bz2 or .xz. A directory means every such file below it, in name
order. `s3://bucket/key` reads one object and `s3://bucket/prefix/` every such object under the prefix, streamed
through boto3 (steps/runtime/storage.py).
"""
from __future__ import annotations

import lzma
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from steps.runtime.errors import ReviewflowError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
SAMPLE_PREFIX = "sample:"
HEAD_BYTES = 1 << 16
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class InputFormat:
    kind: str  # csv | tsv | parquet | jsonl
    compression: str | None  # gzip | bz2 | xz | None


def input_format(path: Path) -> InputFormat:
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        packed = ", ".join(sorted(COMPRESSIONS))
        raise ReviewflowError(
            f"{path}: unsupported file type {''.join(path.suffixes[-2:]) or '(no suffix)'!r}; reviewflow reads "
            f"{known}, optionally compressed as {packed}"
        )
    kind = FORMATS[suffix]
    if kind == "parquet" and compression:
        raise ReviewflowError(f"{path}: Parquet compresses inside the file; decompress {path.name} first")
    return InputFormat(kind, compression)


def _is_input_file(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    try:
        input_format(path)
    except ReviewflowError:
        return False
    return True


def list_input_files(path: Path) -> list[Path]:
    """The files `--data` points at: the file itself, or every readable file in a directory (sorted)."""
    if not path.exists():
        raise ReviewflowError(f"--data {path}: no such file or directory")
    if path.is_file():
        input_format(path)
        return [path]
    files = sorted(p for p in path.rglob("*") if _is_input_file(p))
    if not files:
        raise ReviewflowError(
            f"--data {path}: the directory has no {', '.join(sorted(FORMATS))} files (optionally .gz/.bz2/.xz)"
        )
    return files


def list_s3_inputs(uri: str) -> list:
    """The objects `--data s3://...` points at: the object itself, or every readable object under the prefix."""
    from steps.runtime import storage

    objects = [storage.S3Object(u) for u in storage.list_objects(uri)]
    if len(objects) == 1 and objects[0].uri == uri:
        input_format(objects[0])
        return objects
    readable = []
    for obj in objects:
        try:
            input_format(obj)
        except ReviewflowError:
            continue
        readable.append(obj)
    if not readable:
        raise ReviewflowError(
            f"--data {uri}: no {', '.join(sorted(FORMATS))} objects (optionally .gz/.bz2/.xz) under this prefix"
        )
    return readable


def input_files(data: str) -> list:
    """Local files (Path) or S3 objects (storage.S3Object) for `--data`."""
    if data.startswith("s3://"):
        return list_s3_inputs(data)
    return list_input_files(Path(data).expanduser())


@contextmanager
def open_binary(path, compression: str | None):
    """A binary stream of a local file or an S3 object (streamed), decompressed on the fly."""
    raw = path.open_binary() if hasattr(path, "open_binary") else open(path, "rb")  # noqa: SIM115 - closed below
    try:
        if compression == "gzip":
            import gzip

            handle = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "bz2":
            import bz2

            handle = bz2.BZ2File(raw, "rb")
        elif compression == "xz":
            handle = lzma.LZMAFile(raw, "rb")  # noqa: SIM115 - entered below
        else:
            handle = raw
        with handle:
            yield handle
    finally:
        raw.close()


def read_head(path: Path, fmt: InputFormat) -> bytes:
    try:
        with open_binary(path, fmt.compression) as handle:
            return handle.read(HEAD_BYTES)
    except DECOMPRESSION_ERRORS as err:
        raise unreadable(path, fmt, err) from None


def unreadable(path: Path, fmt: InputFormat, err: Exception) -> ReviewflowError:
    if fmt.compression:
        return ReviewflowError(f"{path}: cannot decompress as {fmt.compression}: {err}. "
                               "The file is truncated or corrupt; copy or download it again.")
    return ReviewflowError(f"{path}: cannot read the file: {err}")
