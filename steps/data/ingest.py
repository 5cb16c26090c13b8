"""Ingest: read reviews from a file, a directory or a named sample, map them to the canonical schema, fingerprint.

Where files come from is steps/data/sources.py, how each is read steps/data/readers.py, how its columns and
labels map onto the contract steps/data/mapping.py; this module puts them together.

The canonical frame has the contract's columns (schemas/reviews_contract.json) in contract order, with
`reviewText` as string, `isPositive` as Int64 0/1 (<NA> where missing) and, when present, the optional
columns. Beside it, `IngestResult.origin` says where each row came from (`source_file`, `source_row`: the
1-based number of the record in its file, header not counted; in a CSV without line breaks inside quoted
fields the line number is source_row + 1), and `IngestResult.rejected` holds records that cannot become
canonical rows at all (a header line repeated inside the data) for the validate step's quarantine.

Labels are never guessed: the contract's 0/1 (as numbers or the strings "0"/"1") are taken as they are;
anything else needs `LabelMapping` (--positive-values, --negative-values or --positive-if).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from schemas import LABEL_COLUMN, TEXT_COLUMN, canonical_columns, load_contract, missing_markers, required_columns
from steps.data.mapping import IngestOptions, LabelMapper
from steps.data.readers import CHUNK_ROWS, missing_columns_error, read_chunks
from steps.data.sources import SAMPLE_PREFIX, input_files
from steps.runtime.errors import ReviewflowError

MARKER_SCAN_CHARS = 16
REPEATED_HEADER = "repeated_header"  # a record that repeats the header line
REJECTED_COLUMNS = ["source_file", "source_row", "reason", TEXT_COLUMN, LABEL_COLUMN]


@dataclass
class IngestResult:
    frame: object  # pandas.DataFrame in canonical form
    fingerprint: str
    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0  # canonical rows read, before any --max-rows subset
    origin: object = None  # DataFrame aligned with frame: source_file, source_row
    rejected: object = None  # DataFrame: source_file, source_row, reason, reviewText, isPositive (as read)
    reads: list[dict] = field(default_factory=list)  # per file: format, compression, encoding, delimiter, rows
    label_counts: dict = field(default_factory=dict)  # label value as read -> rows (explicit mappings only)
    label_mapping: str = "labels taken as 0/1"

    def summary(self) -> dict:
        return {
            "source": self.source,
            "files": len(self.files),
            "rows_read": self.rows_read,
            "rows": len(self.frame),
            "rows_rejected": 0 if self.rejected is None else len(self.rejected),
            "positive_share": round(float(self.frame[LABEL_COLUMN].mean()), 4) if len(self.frame) else None,
            "fingerprint": self.fingerprint,
        }

    def notes(self) -> list[str]:
        """What a person should know about how the files were read (anything not plain UTF-8 comma CSV)."""
        notes = []
        for read in self.reads:
            details = []
            if read.get("delimiter") not in (None, ",", "\t"):
                details.append(f"delimiter {read['delimiter']!r}")
            if read.get("encoding") not in (None, "utf-8"):
                details.append(f"encoding {read['encoding']}")
            if read.get("compression"):
                details.append(f"{read['compression']}-compressed")
            if details:
                notes.append(f"{read['file']}: read with {', '.join(details)}")
        if self.label_counts:
            shown = dict(sorted(self.label_counts.items(), key=lambda kv: -kv[1])[:10])
            more = f" and {len(self.label_counts) - 10} more values" if len(self.label_counts) > 10 else ""
            notes.append(f"labels mapped ({self.label_mapping}): rows per value {shown}{more}")
        if self.rejected is not None and len(self.rejected):
            notes.append(f"{len(self.rejected)} record(s) set aside for the quarantine: "
                         f"{self.rejected['reason'].value_counts().to_dict()}")
        return notes


def _is_string_like(values) -> bool:
    import pandas as pd

    return pd.api.types.is_string_dtype(values.dtype) or values.dtype == object


def _text(values):
    """Text as pandas string; cells equal to a missing marker ('NaN', 'null', ...) become <NA>."""
    import pandas as pd

    string = values.astype("string")
    short = (string.str.len() <= MARKER_SCAN_CHARS).fillna(False)  # markers are short: look at short cells only
    if short.any():
        keys = string[short].str.strip().str.casefold()
        missing = keys.index[keys.isin(missing_markers()).fillna(False)]
        if len(missing):
            string = string.copy()
            string[missing] = pd.NA
    return string


def _boolean(values):
    import pandas as pd

    if pd.api.types.is_bool_dtype(values.dtype):
        return values.astype("boolean")
    keys = values.astype("string").str.strip().str.casefold()
    out = pd.Series(pd.NA, index=values.index, dtype="boolean")
    out[keys.isin(["true", "t", "yes", "y", "1", "1.0"]).fillna(False)] = True
    out[keys.isin(["false", "f", "no", "n", "0", "0.0"]).fillna(False)] = False
    return out


def _integer(values):
    import pandas as pd

    numbers = pd.to_numeric(values.astype("string").str.strip() if _is_string_like(values) else values,
                            errors="coerce").astype("Float64")
    numbers = numbers.where(numbers == numbers.round())
    return numbers.astype("Int64")


def _float(values):
    import pandas as pd

    return pd.to_numeric(values.astype("string").str.strip() if _is_string_like(values) else values,
                         errors="coerce").astype("Float64")


def _canonical_chunk(chunk, origin: str, options: IngestOptions, mapper: LabelMapper, read: dict | None = None):
    """(canonical rows, positions of records that repeat the header, the chunk re-indexed) for one chunk.

    `read` (how the file was read) supplies the file's full header and delimiter for error messages.
    """
    import numpy as np
    import pandas as pd

    contract = load_contract()
    if any(options.source_name(c) not in chunk.columns for c in required_columns()):
        read = read or {}
        missing_columns_error(origin, read.get("columns", chunk.columns), options, read.get("delimiter"))
    chunk = chunk.reset_index(drop=True)
    text_name, label_name = options.source_text_column, options.source_label_column
    repeated_header = np.zeros(len(chunk), dtype=bool)
    if len(chunk) and _is_string_like(chunk[text_name]) and _is_string_like(chunk[label_name]):
        repeated_header = ((chunk[text_name].astype("string").str.strip() == text_name)
                           & (chunk[label_name].astype("string").str.strip() == label_name)).fillna(False).to_numpy()
    kept = chunk[~repeated_header] if repeated_header.any() else chunk
    out = pd.DataFrame(index=kept.index)
    for name, spec in contract["columns"].items():
        source = options.source_name(name)
        if source not in kept.columns:
            continue
        column = kept[source]
        if name == contract["label_column"]:
            out[name] = mapper(column, origin)
        elif spec["dtype"] == "string":
            out[name] = _text(column)
        elif spec["dtype"] == "bool":
            out[name] = _boolean(column)
        elif spec["dtype"] == "int":
            out[name] = _integer(column)
        elif spec["dtype"] == "float":
            out[name] = _float(column)
    return out, np.flatnonzero(repeated_header), chunk


def canonicalize(frame, origin: str, options: IngestOptions | None = None):
    """Check required columns and return the canonical frame (contract columns only, contract dtypes)."""
    options = options or IngestOptions()
    mapper = LabelMapper(options.labels, options.source_label_column)
    canonical, _, _ = _canonical_chunk(frame, origin, options, mapper)
    mapper.check_complete(origin)
    return canonical.reset_index(drop=True)


def fingerprint(frame, chunk_rows: int = CHUNK_ROWS) -> str:
    """Order-independent hash of the canonical rows: the same reviews in any order give the same value.

    Row hashes are computed a chunk of rows at a time (the same values as all at once), so hashing a large
    frame needs little memory beyond the frame itself.
    """
    import numpy as np
    import pandas as pd

    columns = [c for c in canonical_columns() if c in frame.columns]
    row_hashes = np.empty(len(frame), dtype=np.uint64)
    for start in range(0, len(frame), chunk_rows):
        rows = frame.iloc[start:start + chunk_rows][columns].astype("string")
        row_hashes[start:start + len(rows)] = pd.util.hash_pandas_object(rows, index=False).to_numpy()
    digest = hashlib.sha256()
    digest.update(("reviews-v1|" + ",".join(columns) + "|").encode())
    digest.update(np.sort(row_hashes).tobytes())
    return digest.hexdigest()


def _read_files(paths: list[Path], options: IngestOptions, chunk_rows: int):
    import numpy as np
    import pandas as pd

    mapper = LabelMapper(options.labels, options.source_label_column)
    columns = set(options.wanted_columns())
    parts, origins, rejected, reads = [], [], [], []
    for path in paths:
        read: dict = {}
        first_row = 1
        for chunk in read_chunks(path, options, columns, chunk_rows, read):
            canonical, header_rows, raw = _canonical_chunk(chunk, str(path), options, mapper, read)
            rows = np.arange(first_row, first_row + len(raw))
            if len(header_rows):
                rejected.append(pd.DataFrame({
                    "source_file": str(path), "source_row": rows[header_rows], "reason": "repeated_header",
                    TEXT_COLUMN: raw[options.source_text_column].iloc[header_rows].astype("string").to_numpy(),
                    LABEL_COLUMN: raw[options.source_label_column].iloc[header_rows].astype("string").to_numpy(),
                }))
            keep = np.setdiff1d(np.arange(len(raw)), header_rows, assume_unique=True)
            parts.append(canonical.reset_index(drop=True))
            origins.append(pd.DataFrame({"source_file": str(path), "source_row": rows[keep]}))
            first_row += len(raw)
        read["rows"] = first_row - 1
        reads.append(read)
    mapper.check_complete(str(paths[0]) if len(paths) == 1 else f"{len(paths)} files under --data")
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    frame = frame[[c for c in canonical_columns() if c in frame.columns]]
    origin = pd.concat(origins, ignore_index=True) if len(origins) > 1 else origins[0]
    origin["source_file"] = origin["source_file"].astype("category")
    rejects = pd.concat(rejected, ignore_index=True) if rejected else pd.DataFrame(columns=REJECTED_COLUMNS)
    return frame, origin, rejects, reads, (mapper.counts if options.labels.explicit else {})


def check_data_option(data: str) -> None:
    """What can be told about `--data` before any work (ReviewFlow's start step): a sample's name, and a local
    file or directory that exists and holds files of a readable type. s3:// inputs are listed by the ingest
    step, which has the credentials and endpoint for them."""
    if data.startswith("s3://"):
        return
    if data.startswith(SAMPLE_PREFIX):
        from steps.data.samples import sample_spec

        sample_spec(data[len(SAMPLE_PREFIX):])
        return
    input_files(data)


def load_reviews(data: str, max_rows: int = 0, seed: int = 0, options: IngestOptions | None = None,
                 chunk_rows: int = CHUNK_ROWS) -> IngestResult:
    """Read `data` (file, directory or `sample:<name>`), canonicalize, optionally subsample, fingerprint."""
    import numpy as np
    import pandas as pd

    options = options or IngestOptions()
    if max_rows and max_rows < 0:
        raise ReviewflowError(f"--max-rows must be 0 (all rows) or positive, got {max_rows}")
    label_counts: dict = {}
    if data.startswith(SAMPLE_PREFIX):
        from steps.data.samples import load_sample, sample_path

        if not options.is_default:
            raise ReviewflowError(
                f"--data {data} is already in the canonical schema; --text-column, --label-column, "
                "--positive-values, --negative-values, --positive-if and --encoding apply to your own files only"
            )
        name = data[len(SAMPLE_PREFIX):]
        frame = canonicalize(load_sample(name), data)
        files = [str(sample_path(name))]
        origin = pd.DataFrame({"source_file": pd.Categorical([data] * len(frame)),
                               "source_row": np.arange(1, len(frame) + 1)})
        rejected = pd.DataFrame(columns=REJECTED_COLUMNS)
        reads = [{"file": data, "format": "sample", "rows": len(frame)}]
    else:
        paths = input_files(data)
        frame, origin, rejected, reads, label_counts = _read_files(paths, options, chunk_rows)
        files = [str(p) for p in paths]
    rows_read = len(frame)
    if max_rows and rows_read > max_rows:
        # A seeded random subset (kept in file order) rather than the head: files are often sorted by product.
        keep = np.sort(frame.sample(n=max_rows, random_state=seed).index.to_numpy())
        frame = frame.iloc[keep].reset_index(drop=True)
        origin = origin.iloc[keep].reset_index(drop=True)
    return IngestResult(
        frame=frame, fingerprint=fingerprint(frame), source=data, files=files, rows_read=rows_read,
        origin=origin, rejected=rejected, reads=reads, label_counts=label_counts,
        label_mapping=options.labels.describe(),
    )


def _text_only_chunk(raw, origin: str, options: IngestOptions, mapper: LabelMapper, found: list | None = None):
    """One chunk of a file to score: canonical rows aligned with the records read (a record repeating the header
    becomes a row with its text as read and `REPEATED_HEADER` in `unscored_reason`; every other row has <NA>).
    Without a label column, a record whose text is the text column's name repeats the header."""
    import numpy as np
    import pandas as pd

    text, label = options.source_text_column, options.source_label_column
    if text not in raw.columns:
        hint = ("Pass --text-column NAME with the column that holds the review text"
                if not options.text_column else "Check the name given as --text-column")
        raise ReviewflowError(f"{origin}: missing the text column '{text}'; found columns "
                              f"{[str(c) for c in (found or raw.columns)]}. {hint}.")
    labelled = label in raw.columns
    canonical, header_rows, raw = _canonical_chunk(raw if labelled else raw.assign(**{label: pd.NA}), origin,
                                                   options, mapper)
    if not labelled:  # text-only: canonicalized with a placeholder label, which is dropped again
        canonical = canonical.drop(columns=[LABEL_COLUMN])
    canonical = canonical.reindex(range(len(raw)))
    if not labelled and len(raw) and _is_string_like(raw[text]):  # no label to tell a header by: the text alone
        header_rows = np.flatnonzero((raw[text].astype("string").str.strip() == text).fillna(False).to_numpy())
    reason = pd.Series(pd.NA, index=canonical.index, dtype="string")
    if len(header_rows):
        canonical.loc[header_rows, TEXT_COLUMN] = raw[text].iloc[header_rows].astype("string").to_numpy()
        reason.iloc[header_rows] = REPEATED_HEADER
    return canonical.assign(unscored_reason=reason)


def text_chunks(source, options: IngestOptions | None = None, chunk_rows: int = CHUNK_ROWS):
    """The records of one input (a local file, an S3 object or `sample:<name>`) to score, streamed: chunks of
    `chunk_rows` records as (first record's 1-based row number, frame). Each frame has a row per record read (see
    `_text_only_chunk`); only the text column is required, a label column is checked like in training."""
    options = options or IngestOptions()
    if isinstance(source, str) and source.startswith(SAMPLE_PREFIX):
        from steps.data.samples import load_sample

        if not options.is_default:
            raise ReviewflowError(f"--data {source} is already in the canonical schema; --text-column and "
                                  "--encoding apply to your own files only")
        frame = load_sample(source[len(SAMPLE_PREFIX):]).assign(unscored_reason=None).astype(
            {"unscored_reason": "string"})
        for start in range(0, max(len(frame), 1), chunk_rows):
            yield start + 1, frame.iloc[start:start + chunk_rows].reset_index(drop=True)
        return
    mapper = LabelMapper(options.labels, options.source_label_column)
    first_row, read = 1, {}
    for raw in read_chunks(source, options, set(options.wanted_columns()), chunk_rows, read):
        yield first_row, _text_only_chunk(raw, str(source), options, mapper, read.get("columns"))
        first_row += len(raw)
    mapper.check_complete(str(source))


def text_sources(data: str) -> list:
    """What `--data` names for scoring: a sample's name, or its local files / S3 objects."""
    return [data] if data.startswith(SAMPLE_PREFIX) else input_files(data)


def ingest_reviews(run, parent_run_id: str, data: str, max_rows: int, seed: int,
                   options: IngestOptions) -> IngestResult:
    """The ingest step: read `data`, then log its summary, fingerprint and an MLflow dataset input on the step's
    run (`run`, a steps.runtime.tracking.StepRun) and on the flow's parent run."""
    from steps.runtime.tracking import log_dataset

    result = load_reviews(data, max_rows, seed, options)
    run.metrics({k: v for k, v in result.summary().items() if k != "fingerprint"})
    run.tags({"data_fingerprint": result.fingerprint, "data_source": data})
    log_dataset(run.client, [parent_run_id, run.run_id], result.frame, result.fingerprint,
                result.files[0] if len(result.files) == 1 else data)
    print("\n".join([f"Ingested {len(result.frame)} reviews from {data} (fingerprint {result.fingerprint[:12]})."]
                    + result.notes()))
    return result
