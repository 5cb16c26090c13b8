"""Monitoring pieces: which log files a check reads (watermark, settle time), reading them, the drift verdict on
inputs and predictions, the watermark in MLflow, the retraining command."""
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from steps.lifecycle import monitor
from steps.runtime import tracking
from steps.runtime.errors import ReviewflowError
from steps.serving.inference_log import InferenceLog, file_time
from tests.fixtures import review_frame


def logged(texts, labels, probabilities, version="1") -> pd.DataFrame:
    return pd.DataFrame({"text": pd.array(texts, dtype="string"), "label": np.asarray(labels, dtype=np.int64),
                         "probability_positive": np.asarray(probabilities, dtype=float),
                         "model_name": "review-classifier", "model_version": version})


def like_training(rows=300, seed=5) -> pd.DataFrame:
    """Fresh reviews from the training distribution, predicted as confidently as the test split was."""
    frame = review_frame(rows, seed=seed)
    probabilities = np.where(frame["isPositive"] == 1, 0.92, 0.07)
    return logged(frame["reviewText"], frame["isPositive"], probabilities)


REFERENCE = np.where(np.arange(80) % 5 < 3, 0.93, 0.06)  # the champion on its test split: confident


def check(frame, profile, tiny_tokenizer, reference=REFERENCE, **kwargs):
    return monitor.check_window(frame, profile, 1, "", lambda name: tiny_tokenizer, reference,
                                registered_model="review-classifier", **kwargs)


def test_requests_like_the_training_data_do_not_drift(profile, tiny_tokenizer):
    report = check(like_training(), profile, tiny_tokenizer)
    assert report.status in ("stable", "moderate") and not report.drift and report.drifted == []
    assert {f["name"] for f in report.input_features} == {"text_chars", "token_length", "charset", "vocabulary"}
    assert [f["name"] for f in report.prediction_features] == ["predicted_positive", "confidence", "low_confidence"]
    assert report.served_by == {"review-classifier v1": 300} and report.notes == []
    metrics = report.metrics()
    assert metrics["drift"] == 0 and metrics["records"] == 300 and 0.5 < metrics["predicted_positive_share"] < 0.7
    assert "prediction_predicted_positive_psi" in metrics and "drift_psi_vocabulary" in metrics


def test_drifted_inputs_are_named(profile, tiny_tokenizer):
    frame = like_training()
    frame["text"] = frame["text"] + " Привет, zebra quokka wombat platypus"  # longer, Cyrillic, unknown words
    report = check(frame, profile, tiny_tokenizer)
    assert report.drift and report.status == "drift"
    assert {"text_chars", "token_length", "charset", "vocabulary"} <= set(report.drifted)
    assert "DRIFT: 300 records against champion v1" in report.describe()


def test_drifted_predictions_alone_are_drift(profile, tiny_tokenizer):
    frame = like_training()
    frame["label"], frame["probability_positive"] = 0, 0.08  # everything negative: trained on 60% positive
    report = check(frame, profile, tiny_tokenizer)
    assert report.drifted == ["predicted_positive"]
    unsure = like_training()
    unsure["probability_positive"] = np.where(unsure["label"] == 1, 0.62, 0.41)  # right, but hesitant
    report = check(unsure, profile, tiny_tokenizer)
    assert set(report.drifted) == {"confidence", "low_confidence"}
    low = next(f for f in report.prediction_features if f["name"] == "low_confidence")
    assert low["share"] == 1.0 and low["value"] == pytest.approx(1.0)  # all below 0.7; none on the test split


def test_without_the_test_split_the_low_confidence_share_has_a_fixed_threshold(profile, tiny_tokenizer):
    frame = like_training()
    frame.loc[:99, "probability_positive"] = 0.55  # a third of the requests hesitant
    report = check(frame, profile, tiny_tokenizer, reference=None)
    [low] = [f for f in report.prediction_features if f["name"] == "low_confidence"]
    assert (low["measure"], low["threshold"], low["level"]) == ("share", monitor.LOW_CONFIDENCE_SHARE, "drift")
    assert any("no reference for the confidence histogram" in n for n in report.notes)


def test_too_few_records_or_no_champion_claim_nothing(profile, tiny_tokenizer):
    few = check(like_training(rows=40), profile, tiny_tokenizer)
    assert (few.status, few.drift, few.judged, few.drift_tag) == ("too_few", False, False, "not_judged")
    assert "drift" not in few.metrics() and few.metrics()["records"] == 40  # no 0 that plots as "no drift"
    assert "Too few new records to judge drift: 40 since the last check, at least 200 needed" in few.describe()
    nothing = monitor.check_window(like_training(), None, None, "'review-classifier' has no champion yet")
    assert (nothing.status, nothing.drift, nothing.drift_tag) == ("no_champion", False, "not_judged")
    assert nothing.describe() == "Drift not checked: 'review-classifier' has no champion yet"


def test_plots_show_both_sides(profile, tiny_tokenizer):
    report = check(like_training(), profile, tiny_tokenizer)
    plots = monitor.monitor_plots(report)
    assert set(plots) == {"input_drift.png", "prediction_drift.png"}
    assert all(png.startswith(b"\x89PNG") for png in plots.values())


def write_log(location, batches: int) -> None:
    log = InferenceLog(location, flush_seconds=60)
    for i in range(batches):
        log.record([f"text {i}"], [1], [0.9], "m", "1")
        assert log.flush(timeout=10)
    log.close()


def test_new_files_after_the_watermark_and_old_enough_are_read(tmp_path):
    write_log(tmp_path / "log", 3)
    (tmp_path / "log" / "notes.txt").write_text("not a log file")
    (tmp_path / "log" / "foreign.jsonl").write_text('{"a": 1}\n')  # not named like a log file: ignored
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    files, waiting = monitor.list_new_files(str(tmp_path / "log"), "", settle_seconds=120, now=later)
    assert len(files) == 3 and waiting == 0 and [f.key for f in files] == sorted(f.key for f in files)
    assert all(f.written == file_time(f.key.split("/")[1]) for f in files)
    after, _ = monitor.list_new_files(str(tmp_path / "log"), files[0].key, settle_seconds=120, now=later)
    assert after == files[1:]
    too_young, waiting = monitor.list_new_files(str(tmp_path / "log"), "", settle_seconds=120)
    assert too_young == [] and waiting == 3  # just written: left for the next check
    records, unreadable = monitor.read_records(files)
    assert records["text"].tolist() == ["text 0", "text 1", "text 2"] and unreadable == []
    Path(files[1].source).write_text("{broken json\n")
    records, unreadable = monitor.read_records(files)
    assert records["text"].tolist() == ["text 0", "text 2"]
    assert unreadable[0][0] == files[1].key and "malformed JSON" in unreadable[0][1]
    with pytest.raises(ReviewflowError, match="--log .*missing: no such directory"):
        monitor.list_new_files(str(tmp_path / "missing"), "")


def test_an_s3_log_is_listed_after_the_watermark(s3_env):
    import uuid

    location = f"s3://{s3_env.bucket}/monitor-test/{uuid.uuid4().hex}"
    write_log(location, 3)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    files, _ = monitor.list_new_files(location, "", settle_seconds=120, now=later)
    assert len(files) == 3 and all(f.source.startswith(location + "/") for f in files)
    newer, _ = monitor.list_new_files(location, files[1].key, settle_seconds=120, now=later)
    assert newer == files[2:]
    records, _ = monitor.read_records(files)
    assert records["text"].tolist() == ["text 0", "text 1", "text 2"]


def test_the_watermark_is_read_from_the_last_finished_check_of_the_same_log(tracking_uri, tmp_path):
    client = tracking.client(tracking_uri)
    location = monitor.normalize_location(str(tmp_path / "log") + "/")
    assert location == str(tmp_path / "log")
    assert monitor.last_watermark(client, None, location) == ("", None)
    tags = {monitor.LOG_ID_TAG: monitor.location_id(location)}
    first = tracking.start_flow_run(tracking_uri, "MonitorFlow", "1", {}, tags=tags)
    client.set_tag(first, monitor.WATERMARK_TAG, "2026-11-22/a.jsonl")
    tracking.finish_flow_run(tracking_uri, first)
    failed = tracking.start_flow_run(tracking_uri, "MonitorFlow", "2", {}, tags=tags)
    client.set_tag(failed, monitor.WATERMARK_TAG, "2026-11-22/z.jsonl")
    tracking.finish_flow_run(tracking_uri, failed, status="FAILED")  # a failed check moves nothing
    other = tracking.start_flow_run(tracking_uri, "MonitorFlow", "3", {},
                                    tags={monitor.LOG_ID_TAG: monitor.location_id("s3://b/other")})
    client.set_tag(other, monitor.WATERMARK_TAG, "2026-11-23/x.jsonl")
    tracking.finish_flow_run(tracking_uri, other)
    experiment = client.get_experiment_by_name("reviewflow").experiment_id
    assert monitor.last_watermark(client, experiment, location) == ("2026-11-22/a.jsonl", first)


def test_retrain_args_become_review_flow_parameters():
    assert monitor.parse_retrain_args("--data 's3://b/new reviews/' --epochs 3 --force-retrain --seed=7") == {
        "data": "s3://b/new reviews/", "epochs": 3, "force_retrain": True, "seed": 7}
    assert monitor.parse_retrain_args("--learning-rate 3e-3") == {"learning_rate": 0.003}
    with pytest.raises(ReviewflowError, match="--epochs 'three': expected a whole number"):
        monitor.parse_retrain_args("--epochs three")
    assert monitor.parse_retrain_args("") == {}
    with pytest.raises(ReviewflowError, match="'--epoch' is not a ReviewFlow option"):
        monitor.parse_retrain_args("--epoch 3")
    with pytest.raises(ReviewflowError, match="--data needs a value"):
        monitor.parse_retrain_args("--data")
    assert monitor.retrain_command("--data 'my file.csv'") == "python flows/review_flow.py run --data 'my file.csv'"
