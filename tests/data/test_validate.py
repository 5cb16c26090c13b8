import json
import re

import pandas as pd
import pytest

from steps.data.ingest import canonicalize
from steps.data.validate import label_conflicts, log_validation, require_valid, rows_of, validate_reviews
from steps.runtime import tracking
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame
from tests.flow_runs import store_client


def canonical(frame):
    return canonicalize(frame, "test.csv")


def test_clean_reviews_pass_with_nothing_quarantined():
    report = validate_reviews(canonical(review_frame(100)))
    assert report.success and report.quarantined == 0 and len(report.clean) == 100
    assert report.metrics()["expectations_failed"] == 0 and report.metrics()["validation_passed"] == 1
    assert report.gx_result["success"] is True and len(report.gx_result["results"]) == 11
    assert report.clean["isPositive"].dtype == "int64"


def test_the_suite_takes_contract_values_as_parameters():
    report = validate_reviews(canonical(review_frame(20)))
    kwargs = {(r["expectation_config"]["type"], r["expectation_config"]["kwargs"].get("column")):
              r["expectation_config"]["kwargs"] for r in report.gx_result["results"]}
    assert kwargs[("expect_column_values_to_be_in_set", "isPositive")]["value_set"] == [0, 1]
    assert kwargs[("expect_column_value_lengths_to_be_between", "reviewText")]["max_value"] == 20000


def test_row_problems_are_quarantined_with_reasons_and_source_rows():
    frame = review_frame(100)
    frame.loc[3, "reviewText"] = "   "
    frame.loc[7, "reviewText"] = None
    frame.loc[9, "isPositive"] = None
    frame.loc[11, "reviewText"] = "long " * 5000
    report = validate_reviews(canonical(frame), max_bad_fraction=0.05)
    assert report.success
    assert report.quarantine["source_row"].tolist() == [4, 8, 10, 12]  # 1-based, in frame order without origin
    reasons = dict(zip(report.quarantine["source_row"], report.quarantine["reason"]))
    assert reasons == {4: "blank_text", 8: "missing_text", 10: "missing_label", 12: "text_too_long"}
    assert len(report.clean) == 96 and report.clean["isPositive"].dtype == "int64"
    # the clean rows are also positions in the validated frame: ReviewFlow stores those, not a second frame
    assert sorted(set(range(100)) - set(report.clean_rows.tolist())) == [3, 7, 9, 11]
    pd.testing.assert_frame_equal(rows_of(canonical(frame), report.clean_rows), report.clean)
    metrics = report.metrics()
    counts = (metrics["quarantined_blank_text"], metrics["quarantined_text_too_long"], metrics["rows_quarantined"])
    assert counts == (1, 1, 4)
    assert metrics["bad_fraction"] == 0.04


def test_conflicting_duplicates_are_found_by_exact_text_only():
    frame = pd.DataFrame({"reviewText": ["same", "same", "Same", "ok", "ok", "  ", "  ", None, None],
                          "isPositive": [1, 0, 1, 1, 1, 1, 0, 1, 0]})
    assert label_conflicts(canonical(frame)).tolist() == [True, True, False, False, False, False, False, False, False]
    assert label_conflicts(canonical(frame), chunk_rows=2).tolist() == label_conflicts(canonical(frame)).tolist()


def test_origin_and_ingest_rejects_make_the_quarantine():
    frame = canonical(review_frame(60))
    frame.loc[10, "reviewText"] = ""
    origin = pd.DataFrame({"source_file": ["a.csv"] * 30 + ["b.csv"] * 30, "source_row": list(range(1, 31)) * 2})
    rejected = pd.DataFrame({"source_file": ["b.csv"], "source_row": [31], "reason": ["repeated_header"],
                             "reviewText": ["reviewText"], "isPositive": ["isPositive"]})
    report = validate_reviews(frame, 0.05, origin, rejected)
    assert report.success and report.rows_in == 61
    assert report.quarantine[["source_file", "source_row", "reason"]].values.tolist() == [
        ["b.csv", 31, "repeated_header"], ["a.csv", 11, "blank_text"]]


def test_too_many_bad_rows_fail_with_one_message_listing_every_problem():
    frame = review_frame(20)
    frame.loc[:4, "reviewText"] = ""
    frame["isPositive"] = 1
    report = validate_reviews(canonical(frame), max_bad_fraction=0.05)
    assert not report.success
    with pytest.raises(ReviewflowError) as err:
        require_valid(report, "reviews.csv")
    message = str(err.value)
    assert message.startswith("reviews.csv: validation failed; nothing was trained or registered. 2 problem(s):")
    assert "column 'isPositive': the labels do not include both classes" in message
    assert "more than 5.0% of rows fail row checks (--max-bad-fraction 0.05)" in message
    assert "observed: 5 of 20 rows (25.0%): blank_text 5" in message
    assert "e.g. <frame> row 1 (blank_text): ''" in message


def test_a_single_class_is_fatal_and_names_the_column_and_values():
    frame = review_frame(30)
    frame["isPositive"] = 1
    report = validate_reviews(canonical(frame))
    assert not report.success
    (failure,) = report.failures
    assert failure["column"] == "isPositive"
    assert failure["expectation"] == "expect_column_distinct_values_to_contain_set"
    assert failure["observed"] == "distinct values ['1']"


def test_quarantine_removing_a_class_is_fatal():
    frame = review_frame(40)
    frame.loc[frame["isPositive"] == 0, "reviewText"] = ""
    report = validate_reviews(canonical(frame), max_bad_fraction=0.9)
    assert not report.success and report.failures[-1]["expectation"] == "both classes present after quarantine"


def test_empty_table_is_fatal():
    report = validate_reviews(canonical(pd.DataFrame({"reviewText": [], "isPositive": []})))
    assert not report.success
    assert any(f["expectation"] == "expect_table_row_count_to_be_between" for f in report.failures)


def test_max_bad_fraction_must_be_a_fraction():
    with pytest.raises(ReviewflowError, match="--max-bad-fraction must be at least 0 and below 1, got 5"):
        validate_reviews(canonical(review_frame(10)), max_bad_fraction=5)


def test_data_docs_are_built_and_long_values_trimmed(tmp_path):
    frame = review_frame(40)
    frame.loc[1, "reviewText"] = "x" * 25_000
    report = validate_reviews(canonical(frame), 0.05, docs_dir=str(tmp_path / "docs"))
    index = tmp_path / "docs" / "index.html"
    assert report.docs_index == str(index) and index.exists()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    page = " ".join(re.sub(r"<[^>]+>", " ", pages[0].read_text()).split())
    assert len(pages) == 1 and "values must always be less than or equal to 20000 characters long" in page
    assert "(25000 chars)" in page and "x" * 1000 not in page  # the long review is not copied into the HTML
    stored = json.dumps(report.gx_result)
    assert "(25000 chars)" in stored and "x" * 1000 not in stored


def test_the_report_is_logged_to_mlflow(tracking_uri, tmp_path):
    frame = review_frame(40)
    frame.loc[2, "reviewText"] = " "
    report = validate_reviews(canonical(frame), 0.05, docs_dir=str(tmp_path / "docs"))
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "1", {})
    with tracking.step_run(tracking_uri, parent, "validate", "ReviewFlow/1/validate/2") as run:
        log_validation(run, report)
    client = store_client(tracking_uri)
    logged = client.get_run(run.run_id)
    assert logged.data.metrics["rows_quarantined"] == 1 and logged.data.metrics["quarantined_blank_text"] == 1
    assert logged.data.tags["validation"] == "passed"
    paths = {a.path for a in client.list_artifacts(run.run_id, "validation")}
    assert paths == {"validation/gx_result.json", "validation/quarantine.csv", "validation/data_docs"}
    assert any(a.path.endswith("index.html") for a in client.list_artifacts(run.run_id, "validation/data_docs"))
    quarantine = pd.read_csv(client.download_artifacts(run.run_id, "validation/quarantine.csv", str(tmp_path)))
    assert quarantine[["source_row", "reason"]].values.tolist() == [[3, "blank_text"]]
