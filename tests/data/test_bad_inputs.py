"""The corpus of bad inputs: each kind is written here, and its outcome is decided and checked exactly.

Outcomes: "ingest" = load_reviews raises a ReviewflowError (the message is checked); "invalid" = validation
fails with the listed problem(s); "quarantine" = validation passes with exactly these rows set aside;
"accept" = read correctly with nothing set aside. docs/data-contract.md's table lists the same cases.
"""
from __future__ import annotations

import bz2
import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from steps.data.ingest import load_reviews
from steps.data.mapping import IngestOptions
from steps.data.validate import validate_reviews
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame

ROWS = 100  # reviews per good file; 5% of them is the default quarantine limit


def good(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    return review_frame(rows, seed)[["reviewText", "isPositive"]]


def write_csv(frame: pd.DataFrame, path: Path, **kwargs) -> Path:
    frame.to_csv(path, index=False, **kwargs)
    return path


@dataclass
class Case:
    name: str
    write: Callable[[Path], Path]  # writes the input under a folder, returns the --data path
    outcome: str  # ingest | invalid | quarantine | accept
    message: str = ""  # regex the error message must match (ingest / invalid)
    quarantined: dict = field(default_factory=dict)  # reason -> rows (quarantine)
    rows: int | None = None  # clean rows expected (quarantine / accept)
    options: dict = field(default_factory=dict)  # IngestOptions.from_parameters(**options)
    texts: Callable[[], list] | None = None  # the texts an accepted file must yield (default: good())


def _texts_with(row: int, text: str) -> Callable[[], list]:
    def texts():
        values = good()["reviewText"].tolist()
        values[row] = text
        return values
    return texts


def _missing_column(d):
    return write_csv(good().rename(columns={"reviewText": "text"}), d / "reviews.csv")


def _empty(d):
    (d / "reviews.csv").write_bytes(b"")
    return d / "reviews.csv"


def _header_only(d):
    (d / "reviews.csv").write_text("reviewText,isPositive\n")
    return d / "reviews.csv"


def _single_class(d):
    return write_csv(good().assign(isPositive=1), d / "reviews.csv")


def _stars(d):
    return write_csv(good().assign(isPositive=[1 + i % 5 for i in range(ROWS)]), d / "reviews.csv")


def _sentiment_words(d):
    return write_csv(good().assign(isPositive=["positive" if i % 2 else "negative" for i in range(ROWS)]),
                     d / "reviews.csv")


def _true_false(d):
    frame = good().assign(isPositive=[bool(i % 2) for i in range(ROWS)])
    frame.to_json(d / "reviews.jsonl", orient="records", lines=True)
    return d / "reviews.jsonl"


def _too_many_blank(d):
    frame = good()
    frame.loc[:9, "reviewText"] = ["", "  ", "\t"] * 3 + [""]
    return write_csv(frame, d / "reviews.csv")


def _few_blank(d):
    frame = good()
    frame.loc[[5, 50], "reviewText"] = ["   ", ""]
    return write_csv(frame, d / "reviews.csv")


def _null_label(d):
    frame = good().astype({"isPositive": "Int64"})
    frame.loc[[3, 4], "isPositive"] = pd.NA
    return write_csv(frame, d / "reviews.csv")


def _blank_label_cells(d):
    lines = good().to_csv(index=False).splitlines()
    for row in (7, 8, 9):  # header is line 0: empty label cells, as a spreadsheet export writes them
        text, _, _ = lines[row + 1].rpartition(",")
        lines[row + 1] = f"{text},"
    (d / "reviews.csv").write_text("\n".join(lines) + "\n")
    return d / "reviews.csv"


def _conflicting_duplicates(d):
    frame = good()
    frame.loc[10, "reviewText"] = frame.loc[11, "reviewText"] = "It works, I guess."
    frame.loc[10, "isPositive"], frame.loc[11, "isPositive"] = 1, 0
    frame.loc[12, "reviewText"] = frame.loc[13, "reviewText"] = "Same text, same label."  # not a conflict
    frame.loc[12, "isPositive"] = frame.loc[13, "isPositive"] = 1
    return write_csv(frame, d / "reviews.csv")


def _huge_review(d):
    frame = good()
    frame.loc[7, "reviewText"] = "word " * (1024 * 1024)  # 5 MB in one field
    return write_csv(frame, d / "reviews.csv")


def _binary_junk(d):
    (d / "reviews.csv").write_bytes(bytes(range(256)) * 64)
    return d / "reviews.csv"


def _bom(d):
    path = d / "reviews.csv"
    path.write_bytes(b"\xef\xbb\xbf" + good().to_csv(index=False).encode("utf-8"))
    return path


def _mixed_line_endings(d):
    lines = good().to_csv(index=False).splitlines()
    endings = ["\r\n", "\n", "\r"]
    (d / "reviews.csv").write_bytes("".join(line + endings[i % 3] for i, line in enumerate(lines)).encode())
    return d / "reviews.csv"


def _numeric_text(d):
    return write_csv(good().assign(reviewText=[str(1000 + i) for i in range(ROWS)]), d / "reviews.csv")


def _nan_strings(d):
    frame = good()
    frame.loc[[1, 2, 3], "reviewText"] = ["NaN", "null", " None "]
    return write_csv(frame, d / "reviews.csv")


def _repeated_header(d):
    text = good(50).to_csv(index=False) + good(50, seed=1).to_csv(index=False)  # `cat a.csv b.csv`
    (d / "reviews.csv").write_text(text)
    return d / "reviews.csv"


def _duplicate_column_names(d):
    frame = good()
    (d / "reviews.csv").write_text("reviewText,reviewText,isPositive\n"
                                   + "".join(f'"{t}","{t}",{y}\n' for t, y in zip(frame.reviewText, frame.isPositive)))
    return d / "reviews.csv"


def _semicolons(d):
    frame = good()
    frame.loc[0, "reviewText"] = "good; really, very good"  # the delimiter inside a quoted field
    return write_csv(frame, d / "reviews.csv", sep=";")


def _string_labels(d):
    frame = good().assign(isPositive=lambda f: f["isPositive"].astype(str))
    (d / "reviews.csv").write_text(frame.to_csv(index=False, quoting=1))  # "1" and "0", quoted
    return d / "reviews.csv"


def _cp1252(d):
    frame = good()
    frame.loc[4, "reviewText"] = "caf\u00e9 cr\u00e8me, great"
    path = d / "reviews.csv"
    path.write_bytes(frame.to_csv(index=False).encode("cp1252"))
    return path


def _parquet_named_csv(d):
    good().to_parquet(d / "reviews.csv")
    return d / "reviews.csv"


def _truncated_gzip(d):
    data = gzip.compress(good(2000).to_csv(index=False).encode())
    (d / "reviews.csv.gz").write_bytes(data[: len(data) // 2])
    return d / "reviews.csv.gz"


def _utf16(d):
    (d / "reviews.csv").write_bytes(good().to_csv(index=False).encode("utf-16"))
    return d / "reviews.csv"


def _ragged_rows(d):
    text = good(10).to_csv(index=False) + "an extra, unquoted comma,1\n"
    (d / "reviews.csv").write_text(text)
    return d / "reviews.csv"


def _bz2_jsonl_directory(d):
    (d / "data").mkdir()
    good(60).to_json(d / "data" / "a.jsonl", orient="records", lines=True)
    records = good(40, seed=3).to_json(orient="records", lines=True)
    (d / "data" / "b.jsonl.bz2").write_bytes(bz2.compress(records.encode()))
    return d / "data"


CASES = [
    Case("missing required column", _missing_column, "ingest",
         r"reviews\.csv: missing required column\(s\): no 'reviewText' column \(the review text; if yours is named "
         r"differently, pass --text-column NAME\)\. Found columns \['text', 'isPositive'\]"),
    Case("empty file (0 bytes)", _empty, "ingest", r"reviews\.csv: the file is empty \(no header, no rows\)"),
    Case("header only", _header_only, "invalid", r"1\. table: no data rows \(an empty file, or a header only\)"),
    Case("a single class", _single_class, "invalid",
         r"column 'isPositive': the labels do not include both classes.*observed: distinct values \['1'\]"),
    Case("labels outside the contract (1-5 stars)", _stars, "ingest",
         r"column 'isPositive' holds labels outside the contract: found \['2', '3', '4', '5'\] \(80 of 100 rows "
         r"in this part of the file; all values there: \['1', '2', '3', '4', '5'\]\); it must hold 0/1.*"
         r"--positive-if '>=4'"),
    Case("positive/negative words", _sentiment_words, "ingest",
         r"found \['negative', 'positive'\] \(100 of 100 rows.*--positive-values positive \(that value -> 1"),
    Case("True/False labels", _true_false, "ingest",
         r"reviews\.jsonl: column 'isPositive' holds True/False: found \['False', 'True'\].*--positive-values true"),
    Case("more than 5% bad rows", _too_many_blank, "invalid",
         r"more than 5\.0% of rows fail row checks \(--max-bad-fraction 0\.05\).*observed: 10 of 100 rows \(10\.0%\): "
         r"blank_text 10"),
    Case("blank texts under the limit", _few_blank, "quarantine", quarantined={"blank_text": 2}, rows=98),
    Case("null labels", _null_label, "quarantine", quarantined={"missing_label": 2}, rows=98),
    Case("blank label cells", _blank_label_cells, "quarantine", quarantined={"missing_label": 3}, rows=97),
    Case("duplicate texts with conflicting labels", _conflicting_duplicates, "quarantine",
         quarantined={"conflicting_labels": 2}, rows=98),
    Case("a 5 MB single review", _huge_review, "quarantine", quarantined={"text_too_long": 1}, rows=99),
    Case("binary junk", _binary_junk, "ingest", r"reviews\.csv: binary data \(NUL bytes in the first 16384 bytes\)"),
    Case("UTF-8 byte-order mark", _bom, "accept", rows=ROWS),
    Case("mixed line endings", _mixed_line_endings, "accept", rows=ROWS),
    Case("numeric text column", _numeric_text, "invalid",
         r"column 'reviewText': most texts are bare numbers: is --text-column pointing at the review text\?"),
    Case("NaN strings in the text", _nan_strings, "quarantine", quarantined={"missing_text": 3}, rows=97),
    Case("header repeated inside the file", _repeated_header, "quarantine", quarantined={"repeated_header": 1},
         rows=ROWS),
    Case("duplicated column name", _duplicate_column_names, "ingest",
         r"the header names \['reviewText'\] more than once"),
    Case("semicolon-delimited", _semicolons, "accept", rows=ROWS,
         texts=_texts_with(0, "good; really, very good")),
    Case('labels as strings "0"/"1"', _string_labels, "accept", rows=ROWS),
    Case("cp1252 bytes read as UTF-8", _cp1252, "ingest",
         r"reviews\.csv: line 6: bytes e9 are not valid utf-8 after '\"caf'\. "
         r"Pass the file's encoding with --encoding"),
    Case("cp1252 with --encoding cp1252", _cp1252, "accept", rows=ROWS, options={"encoding": "cp1252"},
         texts=_texts_with(4, "caf\u00e9 cr\u00e8me, great")),
    Case("Parquet bytes named .csv", _parquet_named_csv, "ingest",
         r"reviews\.csv: this is a Parquet file; name it .parquet"),
    Case("truncated gzip", _truncated_gzip, "ingest",
         r"reviews\.csv\.gz: cannot decompress as gzip: Compressed file ended before the end-of-stream marker "
         r"was reached\. The file is truncated or corrupt"),
    Case("UTF-16 with byte-order mark", _utf16, "accept", rows=ROWS),
    Case("a row with an extra field", _ragged_rows, "ingest",
         r"malformed CSV \(read with delimiter ','\): Error tokenizing data\. C error: Expected 2 fields in line 12, "
         r"saw 3"),
    Case("directory of JSONL + bz2 JSONL", _bz2_jsonl_directory, "accept", rows=ROWS,
         texts=lambda: good(60)["reviewText"].tolist() + good(40, seed=3)["reviewText"].tolist()),
]


def outcome(data: Path, options: dict):
    """('ingest', message) | ('invalid', message, report) | ('passed', report, ingest result)."""
    try:
        result = load_reviews(str(data), options=IngestOptions.from_parameters(**options))
    except ReviewflowError as err:
        return ("ingest", str(err))
    report = validate_reviews(result.frame, 0.05, result.origin, result.rejected)
    if not report.success:
        return ("invalid", report.error_message(str(data)), report)
    return ("passed", report, result)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_has_its_decided_outcome(case, tmp_path):
    got = outcome(case.write(tmp_path), case.options)
    if case.outcome in ("ingest", "invalid"):
        assert got[0] == case.outcome, got
        assert re.search(case.message, got[1], re.S), got[1]
        return
    assert got[0] == "passed", got[1]
    report = got[1]
    counts = {reason: n for reason, n in report.reason_counts().items() if n}
    assert counts == case.quarantined
    assert len(report.clean) == case.rows
    if case.outcome == "accept":
        assert report.quarantined == 0
        assert report.clean["reviewText"].tolist() == (case.texts or (lambda: good()["reviewText"].tolist()))()
        assert report.clean["isPositive"].tolist() == (
            good(60)["isPositive"].tolist() + good(40, seed=3)["isPositive"].tolist()
            if case.name.startswith("directory") else good()["isPositive"].tolist())


def test_the_corpus_covers_at_least_fifteen_kinds():
    assert len({c.write for c in CASES}) >= 15
    assert {c.outcome for c in CASES} == {"ingest", "invalid", "quarantine", "accept"}


def test_quarantine_rows_name_the_source_line_and_keep_the_row(tmp_path):
    _, report, _ = outcome(_repeated_header(tmp_path), {})
    header_row = report.quarantine.iloc[0]
    # good(50) fills records 1..50; record 51 is the repeated header (line 52 of the file).
    assert (header_row.source_row, header_row.reason, header_row.reviewText) == (51, "repeated_header", "reviewText")
    _, report, _ = outcome(_few_blank(tmp_path), {})
    assert report.quarantine[["source_row", "reason"]].values.tolist() == [[6, "blank_text"], [51, "blank_text"]]
    assert report.quarantine["source_file"].str.endswith("reviews.csv").all()


QUARANTINE_CASES = [c for c in CASES if c.outcome == "quarantine"]


@pytest.mark.parametrize("case", QUARANTINE_CASES, ids=[c.name for c in QUARANTINE_CASES])
def test_every_quarantine_reason_renders_in_the_validation_card(case, tmp_path):
    """Whatever the dtype of the offending value (<NA> labels, NaN texts, 5 MB texts), the card renders."""
    from flowkit.cards.validation import validation_card

    _, report, _ = outcome(case.write(tmp_path), case.options)
    rendered = [part.render() for part in validation_card(report, None, "run-1")]
    quarantine_tables = [r for r in rendered if r.get("type") == "table"
                         and r.get("columns", [])[:3] == ["file", "row", "reason"]]
    assert len(quarantine_tables) == 1
    rows = quarantine_tables[0]["data"]
    assert len(rows) == min(report.quarantined, 10)
    assert {str(r[2]) for r in rows} <= set(case.quarantined) | {"; ".join(sorted(case.quarantined))}
    assert all(len(str(cell)) <= 100 for row in rows for cell in row)  # texts are shortened
