"""Ingest: read reviews from a file, a directory or a named sample, map them to the canonical schema, fingerprint.

Formats, by suffix: .csv, .tsv, .parquet/.pq, .jsonl/.ndjson/.json, each (except Parquet, which compresses
inside the file) optionally compressed as .gz, .bz2 or .xz. A directory means every such file below it, in
name order. `s3://bucket/key` reads one object and `s3://bucket/prefix/` every such object under the prefix,
streamed through boto3 (steps/storage.py); Parquet objects are copied to a temporary file first.

Reading streams: CSV/TSV and JSON Lines are read in chunks of `CHUNK_ROWS` records and Parquet in record
batches, keeping only the columns the contract uses, so memory grows with the canonical rows rather than
with the raw file.

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

import codecs
import csv
import hashlib
import io
import lzma
import operator
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from schemas import canonical_columns, label_values, load_contract, missing_markers, required_columns
from steps.errors import ReviewflowError

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
CHUNK_ROWS = 100_000
CSV_DELIMITERS = (",", ";", "\t", "|")
HEAD_BYTES = 1 << 16
REJECTED_COLUMNS = ["source_file", "source_row", "reason", "reviewText", "isPositive"]
MARKER_SCAN_CHARS = 16
BOMS = (  # longest first: the UTF-32 LE BOM starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
MAGIC = (  # what a mislabelled file really is
    (b"PAR1", "a Parquet file; name it .parquet"),
    (b"\x1f\x8b", "gzip-compressed; name it with a .gz suffix (e.g. reviews.csv.gz)"),
    (b"BZh", "bzip2-compressed; name it with a .bz2 suffix (e.g. reviews.csv.bz2)"),
    (b"\xfd7zXZ\x00", "xz-compressed; name it with a .xz suffix (e.g. reviews.csv.xz)"),
    (b"PK\x03\x04", "a ZIP archive (or an Excel .xlsx workbook); unzip it, or export the sheet as CSV"),
)
DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
COMPARISONS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


# ---------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class LabelMapping:
    """How the user's label values become 1 (positive) / 0 (negative); empty = the contract's 0/1 only.

    positive_values: these values -> 1; every other value -> 0, unless negative_values is given, in which
    case those -> 0 and any value in neither list is an error. positive_if: a comparison such as ">=4" on
    numeric labels (star ratings): true -> 1, false -> 0. Values compare after trimming, case-insensitively,
    and numbers by value ("4" == "4.0").
    """

    positive_values: tuple[str, ...] = ()
    negative_values: tuple[str, ...] = ()
    positive_if: str = ""

    @classmethod
    def from_options(cls, positive_values: str = "", negative_values: str = "", positive_if: str = "") -> "LabelMapping":
        positives = _value_list(positive_values)
        negatives = _value_list(negative_values)
        condition = (positive_if or "").strip()
        if condition and (positives or negatives):
            raise ReviewflowError(
                "--positive-if cannot be combined with --positive-values/--negative-values; use one way to map labels"
            )
        if negatives and not positives:
            raise ReviewflowError("--negative-values needs --positive-values (which values mean positive?)")
        overlap = sorted(set(positives) & set(negatives))
        if overlap:
            raise ReviewflowError(f"--positive-values and --negative-values both list {overlap}")
        mapping = cls(positives, negatives, condition)
        if condition:
            mapping.comparison()  # fail now on a malformed condition, not after reading the data
        return mapping

    @property
    def explicit(self) -> bool:
        return bool(self.positive_values or self.positive_if)

    def comparison(self):
        match = re.fullmatch(r"\s*(>=|<=|==|>|<)\s*([-+]?\d+(?:\.\d+)?)\s*", self.positive_if)
        if not match:
            raise ReviewflowError(
                f"--positive-if {self.positive_if!r}: expected a comparison with a number, e.g. '>=4' "
                "(allowed operators: >=, >, <=, <, ==)"
            )
        return COMPARISONS[match.group(1)], float(match.group(2))

    def describe(self) -> str:
        if self.positive_if:
            return f"label {self.positive_if} -> 1, otherwise 0"
        if self.positive_values:
            negatives = ", ".join(self.negative_values) if self.negative_values else "every other value"
            return f"{', '.join(self.positive_values)} -> 1; {negatives} -> 0"
        return "labels taken as 0/1"


@dataclass(frozen=True)
class IngestOptions:
    """What the user tells ingest about their files (flow parameters of the same names)."""

    text_column: str = ""  # empty = the contract's name, reviewText
    label_column: str = ""  # empty = the contract's name, isPositive
    labels: LabelMapping = field(default_factory=LabelMapping)
    encoding: str = "auto"  # auto = a byte-order mark if present, else UTF-8

    @classmethod
    def from_parameters(cls, text_column: str = "", label_column: str = "", positive_values: str = "",
                        negative_values: str = "", positive_if: str = "", encoding: str = "auto") -> "IngestOptions":
        encoding = (encoding or "auto").strip()
        if encoding.lower() != "auto":
            try:
                encoding = codecs.lookup(encoding).name
            except LookupError:
                raise ReviewflowError(
                    f"--encoding {encoding!r}: unknown encoding; use a Python codec name such as utf-8, cp1252, "
                    "latin-1 or utf-16, or auto"
                ) from None
        return cls(
            text_column=(text_column or "").strip(),
            label_column=(label_column or "").strip(),
            labels=LabelMapping.from_options(positive_values, negative_values, positive_if),
            encoding="auto" if encoding.lower() == "auto" else encoding,
        )

    @property
    def source_text_column(self) -> str:
        return self.text_column or load_contract()["text_column"]

    @property
    def source_label_column(self) -> str:
        return self.label_column or load_contract()["label_column"]

    @property
    def is_default(self) -> bool:
        return self == IngestOptions()

    def source_name(self, canonical: str) -> str:
        """The input column that feeds canonical column `canonical`."""
        contract = load_contract()
        if canonical == contract["text_column"]:
            return self.source_text_column
        if canonical == contract["label_column"]:
            return self.source_label_column
        return canonical

    def wanted_columns(self) -> list[str]:
        """Input column names ingest reads (the mapped text/label columns and the optional canonical ones)."""
        return [self.source_name(c) for c in canonical_columns()]


def _value_list(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_normal_value(v) for v in (text or "").split(",") if v.strip()))


def _normal_value(value: str) -> str:
    key = value.strip().casefold()
    try:
        number = float(key)
    except ValueError:
        return key
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else key


# ---------------------------------------------------------------------------------------------- results


@dataclass
class IngestResult:
    frame: "object"  # pandas.DataFrame in canonical form
    fingerprint: str
    source: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0  # canonical rows read, before any --max-rows subset
    origin: "object" = None  # DataFrame aligned with frame: source_file, source_row
    rejected: "object" = None  # DataFrame: source_file, source_row, reason, reviewText, isPositive (as read)
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
            "positive_share": round(float(self.frame["isPositive"].mean()), 4) if len(self.frame) else None,
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


# ---------------------------------------------------------------------------------------------- files


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
    from steps import storage

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
def _open_binary(path, compression: str | None):
    """A binary stream of a local file or an S3 object (streamed), decompressed on the fly."""
    raw = path.open_binary() if hasattr(path, "open_binary") else open(path, "rb")
    try:
        if compression == "gzip":
            import gzip

            handle = gzip.GzipFile(fileobj=raw, mode="rb")
        elif compression == "bz2":
            import bz2

            handle = bz2.BZ2File(raw, "rb")
        elif compression == "xz":
            handle = lzma.LZMAFile(raw, "rb")
        else:
            handle = raw
        with handle:
            yield handle
    finally:
        raw.close()


def _read_head(path: Path, fmt: InputFormat) -> bytes:
    try:
        with _open_binary(path, fmt.compression) as handle:
            return handle.read(HEAD_BYTES)
    except DECOMPRESSION_ERRORS as err:
        raise _unreadable(path, fmt, err) from None


def _unreadable(path: Path, fmt: InputFormat, err: Exception) -> ReviewflowError:
    if fmt.compression:
        return ReviewflowError(f"{path}: cannot decompress as {fmt.compression}: {err}. "
                               "The file is truncated or corrupt; copy or download it again.")
    return ReviewflowError(f"{path}: cannot read the file: {err}")


def _detect_encoding(path: Path, head: bytes, encoding: str) -> str:
    for bom, name in BOMS:
        if head.startswith(bom):
            if encoding != "auto" and codecs.lookup(encoding).name not in (codecs.lookup(name).name, "utf-8"):
                raise ReviewflowError(
                    f"{path}: the file starts with a {name} byte-order mark but --encoding is {encoding}; "
                    "drop --encoding (auto) or give the matching one"
                )
            return name
    return "utf-8" if encoding == "auto" else encoding


def _reject_binary(path: Path, head: bytes, encoding: str) -> None:
    for magic, what in MAGIC:
        if head.startswith(magic):
            raise ReviewflowError(f"{path}: this is {what}")
    if b"\x00" in head and not encoding.startswith(("utf-16", "utf-32")):
        raise ReviewflowError(
            f"{path}: binary data (NUL bytes in the first {len(head)} bytes), not {encoding} text; check that "
            "--data points at the reviews file (UTF-16 text without a byte-order mark needs --encoding utf-16)"
        )


def undecodable_line(path: Path, compression: str | None, encoding: str) -> tuple[int, bytes, str] | None:
    """(line number, offending bytes, text before them on that line) of the first bytes `encoding` rejects."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line, current = 1, ""
    with _open_binary(path, compression) as handle:
        for raw in handle:  # split at b"\n": \r\n stays whole, and the decoder carries partial characters
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as err:
                before = current + bytes(err.object[:err.start]).decode(encoding, errors="replace")
                return line, bytes(err.object[err.start:err.end]), re.split(r"\r\n|\r|\n", before)[-1]
            breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
            current = re.split(r"\r\n|\r|\n", current + text)[-1]
            line += breaks
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            return line, bytes(err.object[err.start:err.end]), current
    return None


def _decode_error(path: Path, fmt: InputFormat, encoding: str) -> ReviewflowError:
    found = undecodable_line(path, fmt.compression, encoding)
    fix = ("Pass the file's encoding with --encoding (cp1252 for most Windows/Excel exports, latin-1, utf-16, ...) "
           "or re-save the file as UTF-8.")
    if found is None:
        return ReviewflowError(f"{path}: cannot decode the file as {encoding}. {fix}")
    line, bad, before = found
    shown = f" after {before[-40:]!r}" if before else " at the start of the line"
    return ReviewflowError(
        f"{path}: line {line}: bytes {bad.hex(' ')} are not valid {encoding}{shown}. {fix}"
    )


def _header_fields(path: Path, head: bytes, encoding: str, delimiter: str) -> list[str]:
    text = head.decode(encoding, errors="replace")
    first = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    return next(csv.reader([first], delimiter=delimiter), [])


def _pick_delimiter(path: Path, head: bytes, encoding: str, options: IngestOptions) -> tuple[str, list[str]]:
    """The delimiter under which the header names the most required columns, then the most columns; comma wins ties."""
    needed = {options.source_text_column, options.source_label_column}
    parsed = {d: [f.strip() for f in _header_fields(path, head, encoding, d)] for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: (len(needed & set(parsed[d])), len(parsed[d]), d == ","))
    return best, parsed[best]


def _check_header(path: Path, fields: list[str], columns: set | None) -> None:
    repeated = sorted({f for f in fields if fields.count(f) > 1 and (columns is None or f in columns)})
    if repeated:
        raise ReviewflowError(
            f"{path}: the header names {repeated} more than once; reviewflow cannot tell which column to use. "
            "Rename or drop the duplicate column."
        )


def missing_columns_error(origin, columns, options: IngestOptions, delimiter: str | None = None) -> None:
    """Raise the error for required columns absent from `columns`, naming the option that maps them."""
    contract = load_contract()
    columns = [str(c) for c in columns]
    problems = []
    for canonical in required_columns():
        name = options.source_name(canonical)
        if name in columns:
            continue
        is_text = canonical == contract["text_column"]
        option = "--text-column" if is_text else "--label-column"
        if name != canonical:
            problems.append(f"no column {name!r} (given as {option})")
        else:
            what = "the review text" if is_text else "the 0/1 label"
            problems.append(f"no {canonical!r} column ({what}; if yours is named differently, pass {option} NAME)")
    if not problems:
        return
    hint = ""
    if len(columns) == 1:
        others = [d for d in CSV_DELIMITERS if d != (delimiter or ",") and d in columns[0]]
        if others:
            hint = (f" The header was read as one column {columns[0]!r}; it looks {others[0]!r}-delimited, but "
                    "its fields do not name the required columns either.")
    raise ReviewflowError(
        f"{origin}: missing required column(s): " + "; ".join(problems) + f". Found columns {columns}.{hint}"
    )


# ---------------------------------------------------------------------------------------------- readers


def _text_head(path: Path, fmt: InputFormat, options: IngestOptions, nothing: str) -> tuple[bytes, str]:
    """The first bytes of a text file and its encoding; refuses an empty file (`nothing`: what it lacks) and
    binary content."""
    head = _read_head(path, fmt)
    if not head.strip():
        raise ReviewflowError(f"{path}: the file is empty ({nothing})")
    encoding = _detect_encoding(path, head, options.encoding)
    _reject_binary(path, head, encoding)
    return head, encoding


def _csv_chunks(path: Path, fmt: InputFormat, options: IngestOptions, columns: set | None, chunk_rows: int,
                read: dict):
    import pandas as pd

    head, encoding = _text_head(path, fmt, options, "no header, no rows")
    if fmt.kind == "tsv":
        delimiter, fields = "\t", [f.strip() for f in _header_fields(path, head, encoding, "\t")]
    else:
        delimiter, fields = _pick_delimiter(path, head, encoding, options)
    read.update(encoding=encoding, delimiter=delimiter, columns=fields)
    _check_header(path, fields, columns)
    try:
        with _open_binary(path, fmt.compression) as handle:
            # All columns are parsed (usecols would stop the parser from rejecting rows with extra fields);
            # each chunk keeps only the wanted ones.
            reader = pd.read_csv(handle, sep=delimiter, encoding=encoding, dtype=str, keep_default_na=False,
                                 na_filter=False, chunksize=chunk_rows, engine="c")
            with reader:
                for chunk in reader:
                    chunk.columns = [str(c).strip() for c in chunk.columns]
                    yield chunk if columns is None else chunk[[c for c in chunk.columns if c in columns]]
    except UnicodeDecodeError:
        raise _decode_error(path, fmt, encoding) from None
    except pd.errors.EmptyDataError:
        raise ReviewflowError(f"{path}: the file is empty (no header, no rows)") from None
    except pd.errors.ParserError as err:
        raise ReviewflowError(
            f"{path}: malformed {fmt.kind.upper()} (read with delimiter {delimiter!r}): {err}. "
            "Check quoting: a field holding the delimiter or a line break must be in double quotes."
        ) from None
    except DECOMPRESSION_ERRORS as err:
        raise _unreadable(path, fmt, err) from None


def _jsonl_chunks(path: Path, fmt: InputFormat, options: IngestOptions, columns: set | None, chunk_rows: int,
                  read: dict):
    import pandas as pd

    head, encoding = _text_head(path, fmt, options, "no records")
    read.update(encoding=encoding)
    first = head.decode(encoding, errors="replace").lstrip("\ufeff \t\r\n")[:1]
    seen: list[str] = []  # a column missing from a later chunk is a column of nulls there, not a missing column

    def selected(frame):
        read.setdefault("columns", [str(c) for c in frame.columns])
        keep = [c for c in frame.columns if columns is None or c in columns]
        seen.extend(c for c in keep if c not in seen)
        return frame[keep].reindex(columns=seen)

    try:
        with _open_binary(path, fmt.compression) as raw, \
                io.TextIOWrapper(raw, encoding=encoding, errors="strict") as handle:
            if first == "[":  # a JSON array of records: not streamable, read whole
                read.update(layout="array")
                yield selected(pd.read_json(handle, orient="records", dtype=False))
                return
            if first != "{":
                raise ReviewflowError(
                    f"{path}: not JSON Lines: the first character is {first!r}; expected one JSON object per line"
                )
            with pd.read_json(handle, lines=True, chunksize=chunk_rows, dtype=False) as reader:
                for chunk in reader:
                    if len(chunk) or not seen:
                        yield selected(chunk)
    except UnicodeDecodeError:
        raise _decode_error(path, fmt, encoding) from None
    except ValueError as err:
        raise ReviewflowError(f"{path}: malformed JSON: {err}. Each line must be one JSON object.") from None
    except DECOMPRESSION_ERRORS as err:
        raise _unreadable(path, fmt, err) from None


def _parquet_chunks(path: Path, fmt: InputFormat, options: IngestOptions, columns: set | None, chunk_rows: int,
                    read: dict):
    if hasattr(path, "local_copy"):  # an S3 object: Parquet needs random access, so read a temporary copy
        with path.local_copy() as local:
            yield from _parquet_chunks(Path(local), fmt, options, columns, chunk_rows, read)
        read.update(file=str(path))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ReviewflowError(f"{path}: not a readable Parquet file: {err}") from None
    read.update(columns=list(parquet.schema_arrow.names))
    names = [n for n in parquet.schema_arrow.names if columns is None or n in columns]
    if parquet.metadata.num_rows == 0:
        yield parquet.schema_arrow.empty_table().select(names).to_pandas()
        return
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=names):
        yield batch.to_pandas()


READERS = {"csv": _csv_chunks, "tsv": _csv_chunks, "jsonl": _jsonl_chunks, "parquet": _parquet_chunks}


def read_chunks(path: Path, options: IngestOptions, columns: set | None = None, chunk_rows: int = CHUNK_ROWS,
                read: dict | None = None):
    """Chunks of one file: DataFrames of its original columns (only `columns`, when given), all cells as read.

    CSV/TSV cells are strings; JSON and Parquet keep their types. `read` is filled with how the file was read.
    """
    read = {} if read is None else read
    fmt = input_format(path)
    read.update(file=str(path), format=fmt.kind, compression=fmt.compression)
    yield from READERS[fmt.kind](path, fmt, options, columns, chunk_rows, read)


def read_file(path, options: IngestOptions | None = None):
    """Read one whole file (any supported format, encoding, delimiter) into a DataFrame with all its columns."""
    import pandas as pd

    parts = list(read_chunks(path if hasattr(path, "open_binary") else Path(path), options or IngestOptions()))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------------------------------------- canonical rows


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


def _label_keys(values):
    """Label cells as comparable keys: trimmed, case-folded, numbers by value ("1.0" -> "1"); <NA> if missing."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(values.dtype):
        return values.map({True: "true", False: "false"}).astype("string")
    keys = values.astype("string").str.strip().str.casefold()
    keys = keys.mask(keys.isin(missing_markers()) | (keys == ""))
    numbers = pd.to_numeric(keys, errors="coerce")
    if not pd.api.types.is_numeric_dtype(numbers.dtype):
        return keys
    numbers = numbers.astype("Float64")
    integral = numbers.notna() & (numbers.abs() < 1e15) & (numbers == numbers.round())
    if integral.any():
        keys = keys.mask(integral, numbers[integral].astype("Int64").astype("string"))
    return keys


def _star_like(found: list[str]) -> bool:
    try:
        numbers = [float(v) for v in found]
    except ValueError:
        return False
    return all(n.is_integer() for n in numbers) and min(numbers) >= 0 and max(numbers) <= 10


def _mapping_hint(found: list[str]) -> str:
    folded = {v.casefold() for v in found}
    if folded <= {"true", "false"}:
        return "--positive-values true (true -> 1, false -> 0)"
    if _star_like(found):
        return "--positive-if '>=4' (e.g. star ratings: 4-5 -> 1, below -> 0)"
    guess = next((v for v in found if v.casefold() in ("positive", "pos", "good", "yes", "y", "fresh", "like")),
                 None)
    return (f"--positive-values {guess} (that value -> 1, every other value -> 0)" if guess
            else "--positive-values <the value(s) that mean positive> (those -> 1, every other value -> 0)")


class LabelMapper:
    """Applies a LabelMapping chunk by chunk, and keeps the counts that the final checks need."""

    def __init__(self, mapping: LabelMapping, column: str):
        self.mapping = mapping
        self.column = column
        self.counts: dict[str, int] = {}

    def __call__(self, values, origin: str):
        import pandas as pd

        keys = _label_keys(values)
        present = keys.dropna()
        for key, count in present.value_counts().items():
            if key in self.counts or len(self.counts) < 1000:
                self.counts[key] = self.counts.get(key, 0) + int(count)
        if self.mapping.positive_if:
            compare, threshold = self.mapping.comparison()
            numbers = pd.to_numeric(keys, errors="coerce")
            bad = present[numbers[present.index].isna()]
            if len(bad):
                raise ReviewflowError(
                    f"{origin}: --positive-if {self.mapping.positive_if!r} needs numeric labels, but column "
                    f"{self.column!r} also holds {self._found(values, bad.index)}; use --positive-values instead"
                )
            mapped = compare(numbers.astype("Float64"), threshold).astype("Int64")
        elif self.mapping.positive_values:
            mapped = pd.Series(pd.NA, index=keys.index, dtype="Int64")
            mapped[keys.isin(self.mapping.positive_values).fillna(False)] = 1
            if self.mapping.negative_values:
                mapped[keys.isin(self.mapping.negative_values).fillna(False)] = 0
                bad = present[~present.isin(self.mapping.positive_values + self.mapping.negative_values)]
                if len(bad):
                    raise ReviewflowError(
                        f"{origin}: column {self.column!r} holds {self._found(values, bad.index)}, listed in neither "
                        f"--positive-values {','.join(self.mapping.positive_values)} nor --negative-values "
                        f"{','.join(self.mapping.negative_values)}; add them to one list, or drop those rows"
                    )
            else:
                mapped[keys.notna() & ~keys.isin(self.mapping.positive_values).fillna(False)] = 0
        else:
            allowed = [str(v) for v in label_values()]
            bad = present[~present.isin(allowed)]
            if len(bad):
                found = self._found(values, bad.index)
                every = self._found(values, present.index)
                what = "True/False" if {v.casefold() for v in every} <= {"true", "false"} else "labels outside the contract"
                raise ReviewflowError(
                    f"{origin}: column {self.column!r} holds {what}: found {found} ({len(bad)} of {len(values)} "
                    f"rows in this part of the file; all values there: {every}); it must hold {'/'.join(allowed)} "
                    f"(1 = positive). reviewflow does not guess what other labels mean; map them explicitly, "
                    f"e.g. {_mapping_hint(every)}"
                )
            mapped = keys.astype("Int64")
        return mapped

    @staticmethod
    def _found(values, index) -> list[str]:
        return sorted({str(v) for v in values[index].dropna().unique()[:10]})

    def check_complete(self, origin: str) -> None:
        """After all chunks: every value the user listed must occur, so a typo does not map everything to 0."""
        for option, listed in (("--positive-values", self.mapping.positive_values),
                               ("--negative-values", self.mapping.negative_values)):
            unmatched = [v for v in listed if v not in self.counts]
            if unmatched:
                found = sorted(self.counts)[:20]
                raise ReviewflowError(
                    f"{origin}: {option} {','.join(unmatched)} matched no value in column {self.column!r}; "
                    f"the values there are {found}"
                )


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
                    "reviewText": raw[options.source_text_column].iloc[header_rows].astype("string").to_numpy(),
                    "isPositive": raw[options.source_label_column].iloc[header_rows].astype("string").to_numpy(),
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
        from steps.sample_data import load_sample, sample_path

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
        named = [(str(p), read_file(p)) for p in input_files(data)]
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
