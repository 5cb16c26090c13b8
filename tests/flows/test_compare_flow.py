"""CompareFlow for real (metaflow.Runner): two tiny encoders and the TF-IDF baseline, 2-fold grouped CV; the table,
the MLflow parent and child runs, the card and the ReviewFlow command it prints."""
import pytest

from tests.fixtures import build_tiny_distilbert, review_frame, write_reviews_csv
from tests.flow_runs import card_components, run_flow, store_client

pytestmark = pytest.mark.flow

FIGURES = ("accuracy", "f1", "roc_auc", "train_samples_per_s", "train_seconds")


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("compare-flow")
    data = write_reviews_csv(workdir / "reviews.csv", rows=800)  # 2 folds: ~320 training rows each
    wider = build_tiny_distilbert(workdir / "tiny-wider", dim=48, seed=1)  # a second, larger tiny encoder
    other = workdir / "other.csv"  # other reviews every candidate also scores (--extra-data)
    review_frame(60, seed=5)[["reviewText", "isPositive"]].to_csv(other, index=False)
    models = f"{tiny_model_dir},{wider}[learning-rate=0.004],tfidf"
    run, executing = run_flow("compare_flow.py", workdir, data=str(data), models=models, cv_folds=2, epochs=4,
                              extra_data=str(other), batch_size=16, learning_rate=3e-3, max_length=32, seed=1)
    assert executing.status == "successful", executing.stderr[-5000:]
    return run, executing, workdir, {"distilbert": str(tiny_model_dir), "wider": f"{wider}[learning-rate=0.004]"}


def test_every_candidate_is_trained_and_scored_on_every_fold(compared):
    run, executing, _, names = compared
    results = {r["candidate"]: r for r in run.data.results}
    assert list(results) == [names["distilbert"], names["wider"], "tfidf"]  # in the order given
    for name, row in results.items():
        assert row["folds"] == 2 and [f["fold"] for f in row["fold_rows"]] == [0, 1], name
        assert row["test_rows"] == 800, name  # each clean row is a test row in exactly one fold
        for figure in FIGURES:
            folds = [f[figure] for f in row["fold_rows"]]
            assert row[figure] == pytest.approx(sum(folds) / 2, abs=1e-5), (name, figure)
            assert f"{figure}_std" in row, (name, figure)
        assert row["latency_ms_batch1"] > 0 and row["texts_per_s_batch64"] > 0, name
        assert row["parameters"] > 0 and row["size_bytes"] > 0, name
        assert row["accuracy"] > 0.8, (name, row["accuracy"])  # the synthetic sentiment words are easy
        assert list(row["extra_accuracy"]) == ["other"] and row["extra_accuracy"]["other"] > 0.8, name
    assert results[names["wider"]]["settings"].count("learning-rate=0.004") == 1  # its own override
    assert "learning-rate=0.003" in results[names["distilbert"]]["settings"]
    assert results["tfidf"]["parameters"] < results[names["distilbert"]]["parameters"]
    assert "accuracy" in executing.stdout and "latency ms (batch 1)" in executing.stdout


def test_one_mlflow_parent_run_with_a_child_per_candidate(compared):
    run, _, workdir, names = compared
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = store_client(uri)
    experiment = client.get_experiment_by_name("reviewflow").experiment_id
    (parent,) = client.search_runs([experiment], f"tags.metaflow_run = '{run.pathspec}'")
    assert parent.info.status == "FINISHED" and parent.data.params["cv-folds"] == "2"
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    candidates = {c.data.tags["candidate"]: c for c in children if "candidate" in c.data.tags}
    assert set(candidates) == {names["distilbert"], names["wider"], "tfidf"}
    results = {r["candidate"]: r for r in run.data.results}
    for name, child in candidates.items():
        assert child.info.status == "FINISHED"
        assert child.data.metrics["test_accuracy"] == pytest.approx(results[name]["accuracy"])
        assert "test_accuracy_std" in child.data.metrics and "latency_ms_batch1" in child.data.metrics
        history = client.get_metric_history(child.info.run_id, "fold_test_f1")
        assert sorted(m.step for m in history) == [0, 1]
    assert parent.data.tags["chosen"] in candidates
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")} >= {
        "comparison/comparison.json", "comparison/accuracy_vs_latency.png", "comparison/table.txt"}


def test_the_card_has_the_table_the_plot_and_the_command_to_train_the_chosen_one(compared):
    run, executing, _, names = compared
    components = card_components(run["end"].task, "comparison")
    tables = [c for c in components if c["type"] == "table"]
    comparison = tables[0]
    assert comparison["columns"][:4] == ["candidate", "accuracy", "F1", "ROC-AUC"]
    assert "latency ms (batch 1)" in comparison["columns"] and "texts/s (batch 64)" in comparison["columns"]
    assert sorted(row[0] for row in comparison["data"]) == sorted([names["distilbert"], names["wider"], "tfidf"])
    assert all(" ± " in row[1] for row in comparison["data"])  # mean ± std over the 2 folds
    assert comparison["columns"][-1] == "accuracy other"
    assert [c["label"] for c in components if c["type"] == "image"] == ["accuracy vs latency"]
    text = "\n".join(c["source"] for c in components if c["type"] == "markdown")
    command = run.data.train_command
    assert command.startswith("python flows/review_flow.py run ") and "--model " in command
    assert "--epochs 4" in command and "--max-length 32" in command and "--data " in command
    assert command in text and command in executing.stdout
