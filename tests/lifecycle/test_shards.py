"""Sharded batch scoring with a real logged model (the TF-IDF baseline, trained here): the plan, every record
scored once with a stable row id, bounded chunks, unscorable rows, parts and manifest, one file in input order."""
import gzip
import json

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest

from steps.data.mapping import IngestOptions
from steps.evaluation.baseline import log_baseline_model, train_baseline
from steps.lifecycle import predict, shards
from steps.runtime.errors import ReviewflowError
from tests.fixtures import review_frame


@pytest.fixture
def baseline(tracking_uri):
    """(loaded pyfunc, ResolvedModel) of a TF-IDF baseline logged to this test's MLflow store."""
    with mlflow.start_run():
        info = log_baseline_model(train_baseline(review_frame(200, seed=1)))
    resolved = predict.ResolvedModel(info.model_uri, "", "")
    return predict.load_model(resolved, batch_size=32), resolved


def _reviews_csv(path, rows: int, seed: int = 0):
    """`rows` records; some without text or with only spaces, and one line that repeats the header."""
    frame = review_frame(rows, seed=seed)[["reviewText", "isPositive"]].astype({"reviewText": object})
    frame.loc[frame.index % 97 == 5, "reviewText"] = ""
    frame.loc[frame.index % 89 == 7, "reviewText"] = "   "
    lines = frame.to_csv(index=False).splitlines()
    lines.insert(len(lines) // 2, "reviewText,isPositive")
    path.write_text("\n".join(lines) + "\n")
    return len(lines) - 1  # records: the repeated header is one


def _score_all(model, resolved, plan, folder, **kwargs):
    return [shards.score_shard(model, shard, IngestOptions(), resolved, folder, log=lambda _: None, **kwargs)
            for shard in plan]


def test_the_plan_gives_whole_files_when_there_are_enough_else_every_kth_chunk(tmp_path):
    for name, size in (("a.csv", 9000), ("b.csv", 1000), ("c.csv", 4000), ("d.csv", 4000)):
        (tmp_path / name).write_text("reviewText\n" + "x" * size + "\n")
    plan = shards.plan_shards(str(tmp_path), 2)
    assert [s["striped"] for s in plan] == [False, False]
    assert sorted(i for s in plan for i in s["files"]) == [0, 1, 2, 3]  # each file read by one shard only
    assert [s["files"] for s in plan] == [[0], [1, 2, 3]]  # largest first onto the least loaded: 9000 vs 9000
    striped = shards.plan_shards(str(tmp_path / "a.csv"), 3)
    assert [(s["index"], s["of"], s["files"], s["striped"]) for s in striped] == \
        [(k, 3, [0], True) for k in range(3)]
    with pytest.raises(ReviewflowError, match="--shards must be at least 1, got 0"):
        shards.plan_shards(str(tmp_path), 0)


def test_every_record_is_scored_once_with_its_row_id_in_bounded_chunks(baseline, tmp_path):
    model, resolved = baseline
    records = _reviews_csv(tmp_path / "reviews.csv", 1200)
    plan = shards.plan_shards(str(tmp_path / "reviews.csv"), 3)
    sizes = [len(frame) for shard in plan for _, frame in shards.shard_chunks(shard, IngestOptions(), 100)]
    assert max(sizes) == 100 and sum(sizes) == records  # never more than a chunk at a time
    results = _score_all(model, resolved, plan, str(tmp_path / "out") + "/", read_rows=100)
    manifest = shards.finish_output(results, str(tmp_path / "out") + "/", "directory", {"data": "reviews.csv"})

    assert [p["shard"] for p in manifest["parts"]] == [0, 1, 2]  # one part each: chunks with and without
    parts = [pq.read_table(tmp_path / "out" / p["name"]).to_pandas() for p in manifest["parts"]]  # unscored rows
    rows = pd.concat(parts, ignore_index=True).sort_values("source_row", ignore_index=True)
    assert rows["source_row"].tolist() == list(range(1, records + 1))  # one output row per input record
    assert (rows["source_file"] == str(tmp_path / "reviews.csv")).all()
    reasons = rows["unscored_reason"].value_counts().to_dict()
    assert reasons == {"missing_text": 13, "blank_text": 14, "repeated_header": 1}
    assert rows.loc[rows["unscored_reason"].notna(), ["label", "probability_positive"]].isna().all().all()
    scored = rows[rows["unscored_reason"].isna()]
    direct = model.predict(scored[["reviewText"]], params={"output": "probabilities"})
    assert scored["label"].tolist() == direct["label"].tolist()  # sharding changes no score
    assert scored["probability_positive"].tolist() == pytest.approx(direct["probability_positive"].tolist())

    summary = predict.run_summary(results)
    assert (summary["rows"], summary["scored_rows"], summary["unscored_rows"]) == (records, records - 28, 28)
    assert summary["unscored_repeated_header"] == 1 and summary["labelled_rows"] == records - 28
    assert summary["shards"] == 3 and summary["peak_rss_mb"] > 0 and summary["texts_per_s"] > 0
    assert [len(r["chunks"]) for r in results] == [5, 4, 4]  # 13 chunks of <= 100 records, every 3rd to a shard
    for part in manifest["parts"]:  # the manifest describes the files as they are
        written = tmp_path / "out" / part["name"]
        assert part["sha256"] == shards._sha256(written) and part["bytes"] == written.stat().st_size
        assert part["rows"] == pq.ParquetFile(written).metadata.num_rows
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["parts"] == manifest["parts"]
    with pytest.raises(ReviewflowError, match="the directory is not empty"):
        predict.check_output_location(str(tmp_path / "out") + "/")


@pytest.mark.parametrize("name", ["preds.csv.gz", "preds.parquet", "preds.jsonl"])
def test_one_file_is_written_in_input_order_and_the_staged_parts_are_removed(baseline, tmp_path, name):
    model, resolved = baseline
    records = _reviews_csv(tmp_path / "reviews.csv", 700, seed=3)
    output = str(tmp_path / "out" / name)
    kind = predict.check_output_location(output)
    folder = shards.parts_folder(output, kind, "17")
    results = _score_all(model, resolved, shards.plan_shards(str(tmp_path / "reviews.csv"), 2), folder,
                         read_rows=64, text_name="body")
    manifest = shards.finish_output(results, output, kind, {}, text_name="body")
    back = (pd.read_parquet(output) if kind == "parquet" else pd.read_json(output, lines=True, dtype=False)
            if kind == "jsonl" else pd.read_csv(output, keep_default_na=False, na_values=[""]))
    assert back.columns.tolist() == ["source_file", "source_row", "body", "isPositive", "label",
                                     "probability_positive", "unscored_reason", "model_name", "model_version"]
    assert back["source_row"].tolist() == list(range(1, records + 1))  # input order across the two shards
    as_read = pd.read_csv(tmp_path / "reviews.csv", keep_default_na=False, skip_blank_lines=False)["reviewText"]
    texts = back["body"].fillna("").astype(str)
    assert texts.tolist() == as_read.tolist()  # each row's text is its record's
    assert manifest["file"]["rows"] == records and manifest["output"] == str(tmp_path / "out" / name)
    missing, blank = len(range(5, 700, 97)), len(range(7, 700, 89))  # as _reviews_csv empties them
    assert back["label"].isna().sum() == back["unscored_reason"].notna().sum() == missing + blank + 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [name]  # staging gone, no half-written file
    if kind == "csv":
        with gzip.open(output, "rt") as handle:
            assert handle.readline().startswith("source_file,source_row,body,")


def test_parts_roll_over_at_their_row_limit_and_when_the_columns_change(baseline, tmp_path):
    model, resolved = baseline
    review_frame(300)[["reviewText", "isPositive"]].to_csv(tmp_path / "a.csv", index=False)
    review_frame(100, seed=2)[["reviewText"]].to_parquet(tmp_path / "b.parquet")  # text only
    plan = shards.plan_shards(str(tmp_path), 1)
    shards.PART_ROWS, saved = 200, shards.PART_ROWS
    try:
        [result] = _score_all(model, resolved, plan, str(tmp_path / "parts") + "/", read_rows=100)
    finally:
        shards.PART_ROWS = saved
    assert [p["rows"] for p in result["parts"]] == [200, 100, 100]
    assert "isPositive" in result["parts"][0]["columns"] and "isPositive" not in result["parts"][2]["columns"]
    assert result["parts"][2]["files"] == [str(tmp_path / "b.parquet")]
    output = str(tmp_path / "all.parquet")
    shards.finish_output([result], output, "parquet", {})
    merged = pd.read_parquet(output)
    assert len(merged) == 400 and merged["isPositive"].isna().sum() == 100  # the text-only file's rows


def test_parts_and_the_manifest_go_to_s3(baseline, s3_env, tmp_path):
    from steps.runtime import storage

    model, resolved = baseline
    records = _reviews_csv(tmp_path / "reviews.csv", 300)
    prefix = f"s3://{s3_env.bucket}/shards-test/preds/"
    assert predict.check_output_location(prefix) == "directory"
    results = _score_all(model, resolved, shards.plan_shards(str(tmp_path / "reviews.csv"), 2), prefix,
                         read_rows=100)
    manifest = shards.finish_output(results, prefix, "directory", {})
    assert storage.list_objects(prefix) == sorted([prefix + "manifest.json"] + [prefix + p["name"]
                                                                                for p in manifest["parts"]])
    assert sum(p["rows"] for p in manifest["parts"]) == records
    single = f"s3://{s3_env.bucket}/shards-test/one/preds.csv"
    results = _score_all(model, resolved, shards.plan_shards(str(tmp_path / "reviews.csv"), 2),
                         shards.parts_folder(single, "csv", "9"), read_rows=100)
    shards.finish_output(results, single, "csv", {})
    assert storage.list_objects(f"s3://{s3_env.bucket}/shards-test/one/") == [single]  # staged parts removed
    with storage.S3Object(single).local_copy() as local:
        assert pd.read_csv(local)["source_row"].tolist() == list(range(1, records + 1))
