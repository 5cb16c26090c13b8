"""PredictFlow --shards for real: a foreach of shards, one killed, `resume` re-running only that one; the
directory of parts with its manifest; the compiled Argo template fans the shards out."""
import json

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.fixtures import review_frame
from tests.flow_runs import open_run, run_flow, runner

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Two input files and a TF-IDF baseline logged to the store the flows use."""
    from steps.evaluation.baseline import log_baseline_model, train_baseline

    workdir = tmp_path_factory.mktemp("predict-shards")
    (workdir / "new").mkdir()
    review_frame(300, seed=4)[["reviewText", "isPositive"]].to_csv(workdir / "new" / "a.csv", index=False)
    texts = review_frame(200, seed=5)[["reviewText"]].astype(object)
    texts.loc[[3, 50], "reviewText"] = ["", "  "]
    texts.to_parquet(workdir / "new" / "b.parquet")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("baseline-for-predict")
        with mlflow.start_run() as run:
            log_baseline_model(train_baseline(review_frame(200, seed=1)))
    finally:
        mlflow.set_tracking_uri(previous)
    (workdir / "model_uri").write_text(f"runs:/{run.info.run_id}/baseline")
    return workdir


def test_a_killed_shard_is_the_only_one_resume_runs_again(workdir):
    params = {"data": "new", "output": "preds/", "shards": 2, "model_uri": (workdir / "model_uri").read_text()}
    failed, executing = run_flow("predict_flow.py", workdir, env={"REVIEWFLOW_FAIL_AT": "predict/shard_1=kill"},
                                 **params)
    assert not failed.successful, executing.stdout[-2000:]
    assert not (workdir / "preds" / "manifest.json").exists()  # no manifest: the directory is unfinished
    resumed = runner("predict_flow.py", workdir).resume(origin_run_id=failed.id).run
    assert resumed.successful
    origin = open_run(failed.pathspec, workdir)
    before = {t.data.result["index"]: t.data.result for t in origin["predict"] if t.successful}
    after = {t.data.result["index"]: t.data.result for t in open_run(resumed.pathspec, workdir)["predict"]}
    assert list(before) == [0] and before[0] == after[0]  # shard 0 was cloned, not scored again
    assert after[1]["scoring_started"] > before[0]["scoring_finished"]

    manifest = json.loads((workdir / "preds" / "manifest.json").read_text())
    assert manifest["run"] == f"PredictFlow/{resumed.id}" and manifest["shards"] == 2
    assert sorted(p["name"] for p in manifest["parts"]) == ["part-00000-0000.parquet", "part-00001-0000.parquet"]
    rows = pd.concat([pq.read_table(workdir / "preds" / p["name"]).to_pandas() for p in manifest["parts"]])
    assert len(rows) == 500 and not rows.duplicated(["source_file", "source_row"]).any()
    counts = rows.groupby("source_file")["source_row"].agg(["min", "max", "count"])
    assert counts.to_dict("index") == {"new/a.csv": {"min": 1, "max": 300, "count": 300},  # as --data names them
                                       "new/b.parquet": {"min": 1, "max": 200, "count": 200}}
    assert manifest["counts"]["unscored_missing_text"] == manifest["counts"]["unscored_blank_text"] == 1
    assert resumed["end"].task.data.summary["scored_rows"] == 498


def test_one_file_with_shards_is_in_input_order(workdir):
    run, executing = run_flow("predict_flow.py", workdir, data="new", output="all.csv", shards=2,
                              model_uri=(workdir / "model_uri").read_text())
    assert run.successful, executing.stdout[-3000:]
    written = pd.read_csv(workdir / "all.csv")
    assert written["source_row"].tolist() == list(range(1, 301)) + list(range(1, 201))
    assert written["label"].isna().sum() == 2 and run["end"].task.data.manifest["file"]["rows"] == 500
    assert "2 row(s) could not be scored" in executing.stdout
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".all")) == []  # staging removed
