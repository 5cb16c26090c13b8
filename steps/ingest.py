"""Ingest: read reviews from a file, a directory or a named sample, map them to the canonical schema, fingerprint.

The canonical frame has the contract's columns (schemas/reviews_contract.json) in contract order, with
`reviewText` as string, `isPositive` as int64 0/1 and, when present, the optional columns.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from schemas import canonical_columns, load_contract, required_columns
from steps.errors import ReviewflowError

READERS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
SAMPLE_PREFIX = "sample:"


@dataclass
class IngestResult:
    frame: "object"  # pandas.DataFrame in canonical form
    fingerprint: str
    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0

    def summary(self) -> dict:
        return {
            "source": self.source,
            "files": len(self.files),
            "rows_read": self.rows_read,
            "rows": len(self.frame),
            "positive_share": round(float(self.frame["isPositive"].mean()), 4) if len(self.frame) else None,
            "fingerprint": self.fingerprint,
        }


def _reader_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in READERS:
        known = ", ".join(sorted(READERS))
        raise ReviewflowError(f"{path}: unsupported file type {suffix!r}; reviewflow reads {known}")
    return READERS[suffix]


def list_input_files(path: Path) -> list[Path]:
    """The files `--data` points at: the file itself, or every readable file in a directory (sorted)."""
    if not path.exists():
        raise ReviewflowError(f"--data {path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READERS)
    if not files:
        raise ReviewflowError(f"--data {path}: the directory has no {', '.join(sorted(READERS))} files")
    return files


def read_file(path: Path):
    """Read one file into a DataFrame with its original columns."""
    import pandas as pd

    kind = _reader_for(path)
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype_backend="numpy_nullable")
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True)
    except pd.errors.EmptyDataError:
        raise ReviewflowError(f"{path}: the file is empty (no header, no rows)") from None
    except UnicodeDecodeError as err:
        raise ReviewflowError(f"{path}: cannot decode the file as UTF-8 ({err})") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise ReviewflowError(f"{path}: cannot parse as {kind}: {err}") from None


def _coerce_labels(values, origin: str):
    """Map a label column to int64 0/1, accepting only encodings that are already 0/1."""
    import pandas as pd

    if values.isna().any():
        # Null labels are a row-level problem for validate; keep them as <NA>.
        pass
    non_null = values.dropna()
    if pd.api.types.is_bool_dtype(values.dtype):
        raise ReviewflowError(
            f"{origin}: column 'isPositive' holds True/False; reviewflow does not guess which one is positive. "
            "Map it explicitly, e.g. convert the column to 1/0 before ingesting."
        )
    numeric = pd.to_numeric(non_null, errors="coerce") if not pd.api.types.is_numeric_dtype(values.dtype) else non_null
    bad = non_null[numeric.isna() | ~numeric.isin([0, 1])] if len(non_null) else non_null
    if len(bad):
        found = sorted({str(v) for v in bad.unique()[:10]})
        raise ReviewflowError(
            f"{origin}: column 'isPositive' must hold 0/1, found {found} ({len(bad)} rows). "
            "Convert the labels to 1 = positive, 0 = negative."
        )
    return pd.to_numeric(values, errors="coerce").astype("Int64")


def canonicalize(frame, origin: str):
    """Check required columns and return the canonical frame (contract columns only, contract dtypes)."""
    import pandas as pd

    contract = load_contract()
    missing = [c for c in required_columns() if c not in frame.columns]
    if missing:
        raise ReviewflowError(
            f"{origin}: missing required column(s) {missing}; found columns {list(frame.columns)}. "
            f"Rename your text column to '{contract['text_column']}' and your 0/1 label column to "
            f"'{contract['label_column']}'."
        )
    out = pd.DataFrame(index=frame.index)
    for name, spec in contract["columns"].items():
        if name not in frame.columns:
            continue
        column = frame[name]
        if name == contract["label_column"]:
            out[name] = _coerce_labels(column, origin)
        elif spec["dtype"] == "string":
            out[name] = column.astype("string")
        elif spec["dtype"] == "bool":
            out[name] = column.astype("boolean")
        elif spec["dtype"] == "int":
            out[name] = pd.to_numeric(column, errors="coerce").astype("Int64")
        elif spec["dtype"] == "float":
            out[name] = pd.to_numeric(column, errors="coerce").astype("Float64")
    return out.reset_index(drop=True)


def fingerprint(frame) -> str:
    """Order-independent hash of the canonical rows: the same reviews in any order give the same value."""
    import numpy as np
    import pandas as pd

    columns = [c for c in canonical_columns() if c in frame.columns]
    row_hashes = pd.util.hash_pandas_object(frame[columns].astype("string"), index=False).to_numpy()
    digest = hashlib.sha256()
    digest.update(("reviews-v1|" + ",".join(columns) + "|").encode())
    digest.update(np.sort(row_hashes).tobytes())
    return digest.hexdigest()


def load_reviews(data: str, max_rows: int = 0, seed: int = 0) -> IngestResult:
    """Read `data` (file, directory or `sample:<name>`), canonicalize, optionally subsample, fingerprint."""
    import pandas as pd

    if data.startswith(SAMPLE_PREFIX):
        from steps.sample_data import load_sample, sample_path

        name = data[len(SAMPLE_PREFIX):]
        frame = canonicalize(load_sample(name), data)
        files = [str(sample_path(name))]
    else:
        paths = list_input_files(Path(data).expanduser())
        parts = [canonicalize(read_file(p), str(p)) for p in paths]
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        files = [str(p) for p in paths]
    rows_read = len(frame)
    if max_rows and max_rows < 0:
        raise ReviewflowError(f"--max-rows must be 0 (all rows) or positive, got {max_rows}")
    if max_rows and rows_read > max_rows:
        # A seeded random subset (kept in file order) rather than the head: files are often sorted by product.
        frame = frame.sample(n=max_rows, random_state=seed).sort_index().reset_index(drop=True)
    return IngestResult(frame=frame, fingerprint=fingerprint(frame), source=data, files=files, rows_read=rows_read)


def load_texts(data: str):
    """Reviews to score (PredictFlow): the same files, directories, samples and readers as `load_reviews`, but
    only `reviewText` is required. A label column, when present, is checked and kept like in training."""
    import pandas as pd

    contract = load_contract()
    text, label = contract["text_column"], contract["label_column"]
    if data.startswith(SAMPLE_PREFIX):
        from steps.sample_data import load_sample

        named = [(data, load_sample(data[len(SAMPLE_PREFIX):]))]
    else:
        named = [(str(p), read_file(p)) for p in list_input_files(Path(data).expanduser())]
    parts = []
    for origin, raw in named:
        if text not in raw.columns:
            raise ReviewflowError(f"{origin}: missing the text column '{text}'; found columns {list(raw.columns)}. "
                                  f"Rename the column that holds the review text to '{text}'.")
        if label in raw.columns:
            parts.append(canonicalize(raw, origin))
        else:  # text-only: canonicalize with a placeholder label, then drop it
            parts.append(canonicalize(raw.assign(**{label: pd.NA}), origin).drop(columns=[label]))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
