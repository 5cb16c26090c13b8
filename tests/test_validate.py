import pandas as pd
import pytest

from steps.errors import ReviewflowError
from steps.ingest import canonicalize
from steps.validate import require_valid, validate_reviews
from tests.fixtures import review_frame


def canonical(frame):
    return canonicalize(frame, "test.csv")


def test_clean_reviews_pass_with_nothing_quarantined():
    report = validate_reviews(canonical(review_frame(100)))
    assert report.success and report.quarantined == 0 and len(report.clean) == 100
    assert report.metrics()["expectations_failed"] == 0
    assert report.gx_result["success"] is True and len(report.gx_result["results"]) >= 8


def test_blank_and_null_rows_are_quarantined_with_reasons():
    frame = review_frame(100)
    frame.loc[3, "reviewText"] = "   "
    frame.loc[7, "reviewText"] = None
    frame.loc[9, "isPositive"] = None
    report = validate_reviews(canonical(frame), max_bad_fraction=0.05)
    assert report.success
    assert report.quarantine["row"].tolist() == [3, 7, 9]
    reasons = dict(zip(report.quarantine["row"], report.quarantine["reason"]))
    assert "not_match_regex(reviewText)" in reasons[3]
    assert "not_be_null(reviewText)" in reasons[7]
    assert "not_be_null(isPositive)" in reasons[9]
    assert len(report.clean) == 97 and report.clean["isPositive"].dtype == "int64"


def test_too_many_bad_rows_fail_with_one_message_listing_the_problem():
    frame = review_frame(20)
    frame.loc[:4, "reviewText"] = ""
    report = validate_reviews(canonical(frame), max_bad_fraction=0.05)
    assert not report.success
    with pytest.raises(ReviewflowError) as err:
        require_valid(report, "reviews.csv")
    assert "reviews.csv: validation failed" in str(err.value)
    assert "--max-bad-fraction" in str(err.value) and "5 of 20 rows (25.0%)" in str(err.value)


def test_a_single_class_is_fatal_and_names_the_column():
    frame = review_frame(30)
    frame["isPositive"] = 1
    report = validate_reviews(canonical(frame))
    assert not report.success
    failure = report.failures[0]
    assert failure["column"] == "isPositive"
    assert failure["expectation"] == "expect_column_distinct_values_to_contain_set"


def test_empty_table_is_fatal():
    report = validate_reviews(canonical(pd.DataFrame({"reviewText": [], "isPositive": []})))
    assert not report.success
    assert any(f["expectation"] == "expect_table_row_count_to_be_between" for f in report.failures)
