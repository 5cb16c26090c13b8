import pandas as pd
import pytest

from steps.errors import ReviewflowError
from steps.ingest import canonicalize, fingerprint, load_reviews
from tests.fixtures import review_frame


def test_csv_is_read_into_canonical_columns_and_dtypes(reviews_csv):
    result = load_reviews(str(reviews_csv))
    frame = result.frame
    assert list(frame.columns) == ["reviewText", "isPositive", "reviewId"]  # contract order
    assert str(frame["reviewText"].dtype) == "string"
    assert set(frame["isPositive"].unique()) == {0, 1}
    assert len(frame) == 160 and result.rows_read == 160
    assert result.files == [str(reviews_csv)]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".tsv"])
def test_other_formats_give_the_same_rows_and_fingerprint(tmp_path, reviews_csv, suffix):
    frame = pd.read_csv(reviews_csv)
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, sep="\t", index=False)
    assert load_reviews(str(path)).fingerprint == load_reviews(str(reviews_csv)).fingerprint


def test_directory_concatenates_its_files_in_name_order(tmp_path):
    frame = review_frame(40)
    (tmp_path / "data").mkdir()
    frame.iloc[:25].to_csv(tmp_path / "data" / "a.csv", index=False)
    frame.iloc[25:].to_parquet(tmp_path / "data" / "b.parquet")
    (tmp_path / "data" / "notes.txt").write_text("ignored")
    result = load_reviews(str(tmp_path / "data"))
    assert len(result.files) == 2
    assert result.frame["reviewText"].tolist() == frame["reviewText"].tolist()


def test_missing_required_column_names_file_column_and_fix(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"text": ["good"], "isPositive": [1]}).to_csv(path, index=False)
    with pytest.raises(ReviewflowError) as err:
        load_reviews(str(path))
    message = str(err.value)
    assert str(path) in message and "['reviewText']" in message and "found columns ['text', 'isPositive']" in message


def test_labels_outside_zero_one_are_rejected_with_values_found(tmp_path):
    path = tmp_path / "stars.csv"
    pd.DataFrame({"reviewText": ["a", "b", "c"], "isPositive": [1, 5, 3]}).to_csv(path, index=False)
    with pytest.raises(ReviewflowError, match=r"must hold 0/1, found \['3', '5'\] \(2 rows\)"):
        load_reviews(str(path))


def test_string_zero_one_labels_are_accepted_as_integers():
    frame = canonicalize(pd.DataFrame({"reviewText": ["a", "b"], "isPositive": ["1", "0"]}), "x.csv")
    assert frame["isPositive"].tolist() == [1, 0]


def test_boolean_labels_are_not_guessed():
    with pytest.raises(ReviewflowError, match="True/False"):
        canonicalize(pd.DataFrame({"reviewText": ["a"], "isPositive": [True]}), "x.parquet")


def test_unknown_suffix_and_missing_path_are_clear(tmp_path):
    (tmp_path / "r.xlsx").write_text("x")
    with pytest.raises(ReviewflowError, match=r"unsupported file type '.xlsx'"):
        load_reviews(str(tmp_path / "r.xlsx"))
    with pytest.raises(ReviewflowError, match="no such file or directory"):
        load_reviews(str(tmp_path / "nope.csv"))


def test_fingerprint_ignores_row_order_but_not_content():
    frame = review_frame(50)
    shuffled = frame.sample(frac=1, random_state=1).reset_index(drop=True)
    canonical = canonicalize(frame, "a")
    assert fingerprint(canonical) == fingerprint(canonicalize(shuffled, "b"))
    changed = frame.copy()
    changed.loc[3, "isPositive"] = 1 - changed.loc[3, "isPositive"]
    assert fingerprint(canonicalize(changed, "c")) != fingerprint(canonical)


def test_max_rows_takes_a_seeded_subset(reviews_csv):
    a = load_reviews(str(reviews_csv), max_rows=50, seed=7)
    b = load_reviews(str(reviews_csv), max_rows=50, seed=7)
    c = load_reviews(str(reviews_csv), max_rows=50, seed=8)
    assert len(a.frame) == 50 and a.rows_read == 160
    assert a.fingerprint == b.fingerprint != c.fingerprint
    with pytest.raises(ReviewflowError, match="--max-rows"):
        load_reviews(str(reviews_csv), max_rows=-1)
