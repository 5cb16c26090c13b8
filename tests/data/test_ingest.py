import bz2
import gzip
import lzma

import pandas as pd
import pytest

from steps.data.ingest import canonicalize, fingerprint, load_reviews
from steps.data.mapping import IngestOptions, LabelMapping
from steps.data.readers import read_file, undecodable_line
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame


def options(**kwargs) -> IngestOptions:
    return IngestOptions.from_parameters(**kwargs)


def test_csv_is_read_into_canonical_columns_and_dtypes(reviews_csv):
    result = load_reviews(str(reviews_csv))
    frame = result.frame
    assert list(frame.columns) == ["reviewText", "isPositive", "reviewId"]  # contract order
    assert str(frame["reviewText"].dtype) == "string"
    assert set(frame["isPositive"].unique()) == {0, 1}
    assert len(frame) == 160 and result.rows_read == 160
    assert result.files == [str(reviews_csv)]
    assert result.origin["source_row"].tolist() == list(range(1, 161))
    assert set(result.origin["source_file"]) == {str(reviews_csv)} and len(result.rejected) == 0


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".tsv", ".csv.gz", ".csv.bz2", ".jsonl.xz", ".json"])
def test_other_formats_give_the_same_rows_and_fingerprint(tmp_path, reviews_csv, suffix):
    frame = pd.read_csv(reviews_csv)
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".json":  # a JSON array of records, not lines
        frame.to_json(path, orient="records")
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".csv.gz":
        path.write_bytes(gzip.compress(frame.to_csv(index=False).encode()))
    elif suffix == ".csv.bz2":
        path.write_bytes(bz2.compress(frame.to_csv(index=False).encode()))
    else:
        path.write_bytes(lzma.compress(frame.to_json(orient="records", lines=True).encode()))
    assert load_reviews(str(path)).fingerprint == load_reviews(str(reviews_csv)).fingerprint


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_reading_in_small_chunks_gives_the_same_rows_and_row_numbers(tmp_path, suffix):
    frame = review_frame(250)
    path = tmp_path / f"reviews{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path, row_group_size=60)}[suffix]()
    whole = load_reviews(str(path))
    chunked = load_reviews(str(path), chunk_rows=7)
    assert chunked.fingerprint == whole.fingerprint
    pd.testing.assert_frame_equal(chunked.frame, whole.frame)
    assert chunked.origin["source_row"].tolist() == list(range(1, 251))


def test_directory_concatenates_its_files_in_name_order_with_their_row_numbers(tmp_path):
    frame = review_frame(40)
    (tmp_path / "data" / "part").mkdir(parents=True)
    frame.iloc[:25].to_csv(tmp_path / "data" / "a.csv", index=False)
    frame.iloc[25:].to_parquet(tmp_path / "data" / "part" / "b.parquet")
    (tmp_path / "data" / "notes.txt").write_text("ignored")
    (tmp_path / "data" / ".hidden.csv").write_text("ignored")
    result = load_reviews(str(tmp_path / "data"))
    assert [f.rsplit("/", 1)[-1] for f in result.files] == ["a.csv", "b.parquet"]
    assert result.frame["reviewText"].tolist() == frame["reviewText"].tolist()
    assert result.origin["source_row"].tolist() == list(range(1, 26)) + list(range(1, 16))
    assert result.origin["source_file"].iloc[25].endswith("b.parquet")


def test_missing_required_column_names_file_column_and_option(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["good"], "isPositive": [1]}).to_csv(path, index=False)
    with pytest.raises(ReviewflowError) as err:
        load_reviews(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: missing required column(s): no 'reviewText' column")
    assert "--text-column NAME" in message and "Found columns ['text', 'isPositive']" in message
    with pytest.raises(ReviewflowError, match=r"no column 'body' \(given as --text-column\)"):
        load_reviews(str(path), options=options(text_column="body"))


def test_text_and_label_columns_are_mapped_by_option(tmp_path):
    path = tmp_path / "export.csv"
    pd.DataFrame({"id": [1, 2], "body": ["nice", "bad"], "sentiment": ["pos", "neg"]}).to_csv(path, index=False)
    result = load_reviews(str(path), options=options(text_column="body", label_column="sentiment",
                                                     positive_values="pos"))
    assert result.frame[["reviewText", "isPositive"]].values.tolist() == [["nice", 1], ["bad", 0]]
    assert result.label_counts == {"pos": 1, "neg": 1}


@pytest.mark.parametrize("labels, mapping, expected", [
    (["positive", "Negative ", "POSITIVE"], {"positive_values": "positive"}, [1, 0, 1]),
    (["positive", "negative", "neutral"], {"positive_values": "positive", "negative_values": "negative,neutral"},
     [1, 0, 0]),
    ([True, False, True], {"positive_values": "true"}, [1, 0, 1]),
    ([5, 1, 4], {"positive_if": ">=4"}, [1, 0, 1]),
    (["4.0", "3", "5"], {"positive_if": ">3"}, [1, 0, 1]),
    (["2", "1"], {"positive_values": "2"}, [1, 0]),
])
def test_label_mappings_the_user_asks_for(labels, mapping, expected):
    frame = pd.DataFrame({"reviewText": [f"r{i}" for i in range(len(labels))], "isPositive": labels})
    assert canonicalize(frame, "x.csv", options(**mapping))["isPositive"].tolist() == expected


def test_label_mapping_rejects_what_it_cannot_map():
    frame = pd.DataFrame({"reviewText": ["a", "b", "c"], "isPositive": ["positive", "negative", "meh"]})
    with pytest.raises(ReviewflowError, match=r"holds \['meh'\], listed in neither --positive-values positive nor "
                                              r"--negative-values negative"):
        canonicalize(frame, "x.csv", options(positive_values="positive", negative_values="negative"))
    with pytest.raises(ReviewflowError, match=r"--positive-values postive matched no value in column 'isPositive'; "
                                              r"the values there are \['meh', 'negative', 'positive'\]"):
        canonicalize(frame, "x.csv", options(positive_values="postive"))
    with pytest.raises(ReviewflowError, match=r"--positive-if '>=4' needs numeric labels.*\['meh', 'negative'"):
        canonicalize(frame, "x.csv", options(positive_if=">=4"))


@pytest.mark.parametrize("kwargs, message", [
    ({"positive_if": "four or more"}, r"--positive-if 'four or more': expected a comparison with a number"),
    ({"positive_if": ">=4", "positive_values": "5"}, "cannot be combined"),
    ({"negative_values": "bad"}, r"--negative-values needs --positive-values"),
    ({"positive_values": "a,b", "negative_values": "b"}, r"both list \['b'\]"),
    ({"encoding": "klingon"}, r"--encoding 'klingon': unknown encoding"),
])
def test_malformed_options_fail_before_any_data_is_read(kwargs, message):
    with pytest.raises(ReviewflowError, match=message):
        options(**kwargs)


def test_mapping_options_do_not_apply_to_the_sample():
    with pytest.raises(ReviewflowError, match="apply to your own files only"):
        load_reviews("sample:amazon", options=options(positive_if=">=4"))


def test_string_zero_one_labels_and_float_labels_are_accepted_as_integers():
    frame = canonicalize(pd.DataFrame({"reviewText": ["a", "b", "c", "d"], "isPositive": ["1", "0", " 1 ", "0.0"]}),
                         "x.csv")
    assert frame["isPositive"].tolist() == [1, 0, 1, 0]


def test_boolean_labels_are_not_guessed():
    with pytest.raises(ReviewflowError, match=r"holds True/False: found \['True'\].*--positive-values true"):
        canonicalize(pd.DataFrame({"reviewText": ["a"], "isPositive": [True]}), "x.parquet")


def test_missing_markers_become_missing_in_every_format(tmp_path):
    frame = pd.DataFrame({"reviewText": ["fine", "NaN", "null", "n/a", "  ", "None of it worked"],
                          "isPositive": ["1", "0", "", "NULL", "1", "0"]})
    path = tmp_path / "r.jsonl"
    frame.to_json(path, orient="records", lines=True)
    canonical = load_reviews(str(path)).frame
    assert canonical["reviewText"].isna().tolist() == [False, True, True, True, False, False]
    assert canonical["isPositive"].isna().tolist() == [False, False, True, True, False, False]


def test_optional_columns_get_contract_dtypes(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"reviewText": ["a", "b"], "isPositive": [1, 0], "verified": ["True", "no"],
                  "time": ["1700000000", ""], "log_votes": ["0.5", "x"], "summary": ["s", "NaN"],
                  "extra": ["dropped", "dropped"]}).to_csv(path, index=False)
    frame = load_reviews(str(path)).frame
    assert list(frame.columns) == ["reviewText", "isPositive", "summary", "verified", "time", "log_votes"]
    assert frame["verified"].tolist() == [True, False] and str(frame["verified"].dtype) == "boolean"
    assert frame["time"].tolist()[0] == 1700000000 and frame["time"].isna().tolist() == [False, True]
    assert frame["log_votes"].tolist()[0] == 0.5 and frame["log_votes"].isna().tolist() == [False, True]
    assert frame["summary"].isna().tolist() == [False, True]


def test_undecodable_bytes_are_located_by_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"reviewText,isPositive\r\nok,1\r\nstill ok,0\r\nna\xefve,1\r\n")
    assert undecodable_line(path, None, "utf-8") == (4, b"\xef", "na")
    with pytest.raises(ReviewflowError, match=r"line 4: bytes ef are not valid utf-8 after 'na'"):
        load_reviews(str(path))


def test_encoding_mismatch_with_a_byte_order_mark_is_reported(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"\xef\xbb\xbf" + review_frame(10).to_csv(index=False).encode())
    with pytest.raises(ReviewflowError, match=r"starts with a utf-8-sig byte-order mark but --encoding is cp1252"):
        load_reviews(str(path), options=options(encoding="cp1252"))


def test_read_file_keeps_every_column_for_other_uses(tmp_path):
    path = tmp_path / "score.csv"
    path.write_text("id;reviewText;note\n1;great;x\n2;bad;y\n")
    frame = read_file(path)
    assert list(frame.columns) == ["id", "reviewText", "note"] and frame["reviewText"].tolist() == ["great", "bad"]


def test_unknown_suffix_and_missing_path_are_clear(tmp_path):
    (tmp_path / "r.xlsx").write_text("x")
    with pytest.raises(ReviewflowError, match=r"unsupported file type '.xlsx'"):
        load_reviews(str(tmp_path / "r.xlsx"))
    with pytest.raises(ReviewflowError, match="no such file or directory"):
        load_reviews(str(tmp_path / "nope.csv"))
    (tmp_path / "r.parquet.gz").write_bytes(b"x")
    with pytest.raises(ReviewflowError, match="Parquet compresses inside the file"):
        load_reviews(str(tmp_path / "r.parquet.gz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReviewflowError, match="the directory has no"):
        load_reviews(str(tmp_path / "empty"))


def test_fingerprint_ignores_row_order_and_chunking_but_not_content():
    frame = review_frame(50)
    shuffled = frame.sample(frac=1, random_state=1).reset_index(drop=True)
    canonical = canonicalize(frame, "a")
    assert fingerprint(canonical) == fingerprint(canonicalize(shuffled, "b")) == fingerprint(canonical, chunk_rows=3)
    changed = frame.copy()
    changed.loc[3, "isPositive"] = 1 - changed.loc[3, "isPositive"]
    assert fingerprint(canonicalize(changed, "c")) != fingerprint(canonical)


def test_max_rows_takes_a_seeded_subset_with_its_origin(reviews_csv):
    a = load_reviews(str(reviews_csv), max_rows=50, seed=7)
    b = load_reviews(str(reviews_csv), max_rows=50, seed=7)
    c = load_reviews(str(reviews_csv), max_rows=50, seed=8)
    assert len(a.frame) == 50 and a.rows_read == 160 and len(a.origin) == 50
    assert a.fingerprint == b.fingerprint != c.fingerprint
    full = load_reviews(str(reviews_csv)).frame
    rows = a.origin["source_row"].to_numpy() - 1
    assert a.frame["reviewText"].tolist() == full["reviewText"].iloc[rows].tolist()
    with pytest.raises(ReviewflowError, match="--max-rows"):
        load_reviews(str(reviews_csv), max_rows=-1)


def test_label_mapping_describes_itself():
    assert LabelMapping.from_options(positive_if=">=4").describe() == "label >=4 -> 1, otherwise 0"
    assert LabelMapping.from_options("Positive,5.0").positive_values == ("positive", "5")
