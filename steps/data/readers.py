"""Readers: one file (local or S3) as chunks of its original columns, whatever its encoding, delimiter and format.

Reading streams: CSV/TSV and JSON Lines are read in chunks of `CHUNK_ROWS` records and Parquet in record batches,
keeping only the columns asked for, so memory grows with the rows kept rather than with the raw file. Before a
text file is parsed its first bytes are checked: empty, binary or mislabelled files, byte-order marks and
encodings get an error that names the file and what to do.
"""
from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

from schemas import load_contract, required_columns
from steps.data.mapping import IngestOptions
from steps.data.sources import DECOMPRESSION_ERRORS, InputFormat, input_format, open_binary, read_head, unreadable
from steps.runtime.errors import ReviewflowError

CHUNK_ROWS = 100_000
CSV_DELIMITERS = (",", ";", "\t", "|")
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
    with open_binary(path, compression) as handle:
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
    head = read_head(path, fmt)
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
        with open_binary(path, fmt.compression) as handle:
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
        raise unreadable(path, fmt, err) from None


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
        with open_binary(path, fmt.compression) as raw, \
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
        raise unreadable(path, fmt, err) from None


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
