"""Batch prediction pieces: reading text-only files, pinning the model version, scoring in order, the inference
log. (Sharding, parts and output files: tests/lifecycle/test_shards.py.)"""
import pandas as pd
import pytest
from mlflow import MlflowClient

from steps.data.ingest import text_chunks, text_sources
from steps.data.mapping import IngestOptions
from steps.evaluation import gate
from steps.lifecycle import predict, registry
from steps.runtime import tracking
from steps.runtime.errors import ReviewflowError
from steps.training.models import load_classifier, load_tokenizer
from tests.fixtures import served_model_uri


def to_score(data: str, options: IngestOptions | None = None):
    """Everything `--data` names, read as PredictFlow's shards read it (one frame here: the inputs are small)."""
    frames = [frame for source in text_sources(data) for _, frame in text_chunks(source, options)]
    return pd.concat(frames, ignore_index=True)


def test_text_only_files_are_read_with_the_ingest_readers(tmp_path):
    pd.DataFrame({"reviewText": ["great", "awful"], "verified": [True, False]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"reviewText": ["fine"], "isPositive": [1]}).to_json(tmp_path / "b.jsonl", orient="records",
                                                                      lines=True)
    only_text = to_score(str(tmp_path / "a.parquet"))
    assert only_text.columns.tolist() == ["reviewText", "verified", "unscored_reason"]
    assert str(only_text["reviewText"].dtype) == "string" and only_text["verified"].tolist() == [True, False]
    (tmp_path / "joined.csv").write_text("reviewText\ngood one\nreviewText\nbad\n")  # text only, two files joined
    joined = to_score(str(tmp_path / "joined.csv"))
    assert joined["unscored_reason"].fillna("").tolist() == ["", "repeated_header", ""]
    (tmp_path / "joined.csv").unlink()
    both = to_score(str(tmp_path))  # a directory: every readable file, sorted
    assert both["reviewText"].tolist() == ["great", "awful", "fine"]
    assert both["isPositive"].isna().tolist() == [True, True, False]


def test_a_file_without_review_text_or_with_bad_labels_is_refused(tmp_path):
    pd.DataFrame({"text": ["great"]}).to_csv(tmp_path / "wrong.csv", index=False)
    with pytest.raises(ReviewflowError, match=r"wrong.csv: missing the text column 'reviewText'.*--text-column NAME"):
        to_score(str(tmp_path / "wrong.csv"))
    pd.DataFrame({"reviewText": ["great"], "isPositive": ["yes"]}).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(ReviewflowError, match="isPositive"):
        to_score(str(tmp_path / "labels.csv"))
    with pytest.raises(ReviewflowError, match="no such file"):
        to_score(str(tmp_path / "missing.csv"))


def test_a_named_text_column_any_encoding_and_compression_are_read_like_ingest(tmp_path):
    import gzip

    frame = pd.DataFrame({"id": [7, 8], "body": ["Très bien, café parfait", "nul"]})
    (tmp_path / "a.tsv.gz").write_bytes(gzip.compress(frame.to_csv(sep="\t", index=False).encode("cp1252")))
    read = to_score(str(tmp_path / "a.tsv.gz"), IngestOptions.from_parameters(text_column="body", encoding="cp1252"))
    assert read["reviewText"].tolist() == ["Très bien, café parfait", "nul"]
    with pytest.raises(ReviewflowError, match=r"a.tsv.gz: line 2: bytes e8 are not valid utf-8.*--encoding"):
        to_score(str(tmp_path / "a.tsv.gz"), IngestOptions.from_parameters(text_column="body"))
    with pytest.raises(ReviewflowError, match=r"missing the text column 'text'.*Check the name given as --text-column"):
        to_score(str(tmp_path / "a.tsv.gz"), IngestOptions.from_parameters(text_column="text", encoding="cp1252"))
    with pytest.raises(ReviewflowError, match="apply to your own files only"):
        to_score("sample:amazon", IngestOptions.from_parameters(text_column="body"))
    (tmp_path / "b.csv").write_bytes(b"PAR1 not really a csv")
    with pytest.raises(ReviewflowError, match="b.csv: this is a Parquet file; name it .parquet"):
        to_score(str(tmp_path / "b.csv"))


def test_output_format_follows_the_extension():
    assert [predict.check_output(p) for p in ("a.csv", "b.PARQUET", "c.jsonl", "d.csv.gz", "s3://b/k/e.jsonl.xz")] \
        == ["csv", "parquet", "jsonl", "csv", "jsonl"]
    for bad in ("preds.xlsx", "preds.parquet.gz", "preds"):
        with pytest.raises(ReviewflowError, match=f"--output {bad}: write .csv, .parquet or .jsonl.*end it in /"):
            predict.check_output(bad)
    assert predict.check_output("s3://bucket/out/") == predict.check_output("out/") == "directory"
    with pytest.raises(ReviewflowError, match="no bucket name"):
        predict.check_output_location("s3:///preds.csv")


@pytest.fixture
def registered(tracking_uri, tiny_model_dir, tmp_path):
    classifier = tmp_path / "classifier"
    load_classifier(str(tiny_model_dir)).save_pretrained(classifier)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(classifier)
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "1", {})
    with tracking.step_run(tracking_uri, parent, "register", "ReviewFlow/1/register/8") as run:
        registry.register(run.client, "review-classifier", served_model_uri(classifier), "ReviewFlow/1", {},
                          verdict=gate.judge(0.9))
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def test_model_uris_are_pinned_to_a_version(registered):
    pinned = predict.resolve_model_uri(registered, "models:/review-classifier@champion")
    assert (pinned.uri, pinned.name, pinned.version) == ("models:/review-classifier/1", "review-classifier", "1")
    assert predict.resolve_model_uri(registered, "models:/review-classifier/1").uri == "models:/review-classifier/1"
    assert predict.resolve_model_uri(registered, "runs:/abc/model").uri == "runs:/abc/model"
    assert predict.resolve_model_uri(registered, "models:/m-0a1b").uri == "models:/m-0a1b"  # a LoggedModel id
    with pytest.raises(ReviewflowError, match="has no alias 'staging'"):
        predict.resolve_model_uri(registered, "models:/review-classifier@staging")
    with pytest.raises(ReviewflowError, match="has no version 7"):
        predict.resolve_model_uri(registered, "models:/review-classifier/7")


def test_every_row_is_scored_in_input_order_and_a_row_without_text_is_not(registered):
    resolved = predict.resolve_model_uri(registered, "models:/review-classifier@champion")
    model = predict.load_model(resolved, batch_size=2)
    reviews = pd.DataFrame({"reviewText": pd.array(["great phone", None, "terrible junk", "love it", "  "],
                                                    dtype="string"),
                            "isPositive": pd.array([1, 0, 0, 1, 0], dtype="Int64")})
    out = predict.score_rows(model, reviews, resolved)
    assert out.columns.tolist() == ["reviewText", "isPositive", "label", "probability_positive", "unscored_reason",
                                    "model_name", "model_version"]
    assert out["reviewText"].tolist()[2:4] == ["terrible junk", "love it"]
    # a row without text is not given a label: it gets its reason, and is counted apart
    assert out["label"].isna().tolist() == [False, True, False, False, True]
    assert out["unscored_reason"].fillna("").tolist() == ["", "missing_text", "", "", "blank_text"]
    assert out["probability_positive"].isna().tolist() == out["label"].isna().tolist()
    scored = out.dropna(subset=["label"])
    alone = model.predict(pd.DataFrame({"reviewText": ["terrible junk"]}),  # batching does not change a row
                          params={"output": "probabilities"})
    assert out["probability_positive"].iloc[2] == pytest.approx(alone["probability_positive"].iloc[0], abs=1e-6)
    assert ((scored["label"] == 1) == (scored["probability_positive"] >= 0.5)).all()
    assert (out["model_version"] == "1").all()
    summary = predict.summarize(predict.tally(out))
    assert (summary["rows"], summary["scored_rows"], summary["unscored_rows"], summary["unscored_missing_text"],
            summary["unscored_blank_text"], summary["labelled_rows"]) == (5, 3, 2, 1, 1, 3)
    right = int((scored["label"] == scored["isPositive"]).sum())
    assert summary["accuracy_on_labelled_rows"] == round(right / 3, 4)
    with pytest.raises(ReviewflowError, match="--batch-size"):
        predict.load_model(resolved, batch_size=0)


def test_a_resumed_runs_pause_is_not_scoring_time():
    assert predict.busy_seconds([(0, 10), (5, 12), (100, 103)]) == 15  # overlapping shards, then a cloned one
    assert predict.busy_seconds([(3, 4)]) == 1 and predict.busy_seconds([]) == 0


def test_scores_go_to_the_inference_log_and_s3_outputs_are_checked(registered, s3_env, tmp_path, monkeypatch):
    from steps.lifecycle import shards
    from steps.serving.inference_log import InferenceLog

    resolved = predict.resolve_model_uri(registered, "models:/review-classifier@champion")
    model = predict.load_model(resolved, batch_size=4)
    reviews = pd.DataFrame({"reviewText": pd.array([f"great phone {i}" for i in range(7)] + [""], dtype="string")})
    log = InferenceLog(tmp_path / "log", flush_seconds=0.05)
    out = predict.score_rows(model, reviews, resolved, inference_log=log)
    assert log.close()["records_written"] == 7  # the scored rows; the empty one was not scored
    [logged_file] = (tmp_path / "log").rglob("*.jsonl")
    logged = pd.read_json(logged_file, lines=True, dtype=False)
    assert logged["text"].tolist() == reviews["reviewText"].tolist()[:7]
    assert logged["probability_positive"].tolist() == pytest.approx(out["probability_positive"].tolist()[:7])
    assert set(logged["model_version"]) == {"1"} and set(logged["model_name"]) == {"review-classifier"}

    with pytest.raises(ReviewflowError, match="--output s3://missing-bucket-x/p.csv: .* bucket 'missing-bucket-x' "
                                              "does not exist"):
        predict.check_output_location("s3://missing-bucket-x/p.csv")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "readonlykey")  # the S3 server's read-only identity
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "readonly-secret-xyz")
    (tmp_path / "in.csv").write_text("reviewText\ngood\n")
    [shard] = shards.plan_shards(str(tmp_path / "in.csv"), 1)
    with pytest.raises(ReviewflowError, match=rf"s3://{s3_env.bucket}/predict-test/denied/part-00000-0000.parquet: "
                                              "access denied for key read…"):
        shards.score_shard(model, shard, IngestOptions(), resolved, f"s3://{s3_env.bucket}/predict-test/denied/",
                           log=lambda _: None)
