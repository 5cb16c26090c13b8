"""CompareFlow's pieces without a flow run: candidates, per-candidate settings, aggregation, the table, the
command that trains the chosen one, and a tiny candidate trained and measured for real."""
import pytest

from steps.data.split import split_reviews
from steps.evaluation import compare
from steps.runtime.errors import ReviewflowError
from steps.training.models import load_classifier
from tests.fixtures import review_frame


def test_candidates_with_their_own_settings():
    candidates = compare.parse_candidates("minilm, tfidf,minilm[epochs=3, learning-rate=1e-4],x[freeze-encoder=on]")
    assert [c.spec for c in candidates] == ["minilm", "tfidf", "minilm[epochs=3, learning-rate=1e-4]",
                                            "x[freeze-encoder=on]"]
    assert candidates[2].overrides == {"epochs": 3, "learning-rate": 1e-4} and candidates[1].is_tfidf
    assert candidates[3].overrides == {"freeze-encoder": True}
    values = compare.candidate_values({"epochs": 2, "learning-rate": 5e-5, "max-length": 128, "data": "x"},
                                      candidates[2])
    assert values == {"epochs": 3, "learning-rate": 1e-4, "max-length": 128}


@pytest.mark.parametrize("text, message", [
    ("", "at least one candidate"),
    ("minilm,minilm", "more than once"),
    ("minilm[min-f1=0.5]", "is not SETTING=VALUE"),
    ("minilm[epochs=-1]", "--epochs must be at least 1"),
    ("minilm[epochs=two]", "is not a valid int"),
    ("tfidf[epochs=3]", "takes no training settings"),
    ("minilm[epochs=3", "cannot read candidate"),
])
def test_bad_candidates_are_refused_with_the_reason(text, message):
    with pytest.raises(ReviewflowError, match=message):
        compare.parse_candidates(text)


def test_a_missing_directory_is_refused_before_any_work(tmp_path):
    with pytest.raises(ReviewflowError, match="no such directory"):
        compare.check_candidates(compare.parse_candidates(f"tfidf,{tmp_path}/nothing-here"))


def test_folds_aggregate_to_mean_and_std_and_the_table_ranks_by_f1():
    folds = [{"candidate": "a", "model": "a", "parameters": 10, "size_bytes": 2e6, "train_rows": 100,
              "test_rows": 50, "accuracy": acc, "f1": acc, "roc_auc": 0.9, "train_samples_per_s": 10.0,
              "train_seconds": 5.0, **extra} for acc, extra in
             ((0.8, {"latency_ms_batch1": 4.0, "texts_per_s_batch64": 900.0, "extra_accuracy": {"m": 0.7}}),
              (0.9, {}))]
    row = compare.aggregate(folds)
    assert row["accuracy"] == pytest.approx(0.85) and row["accuracy_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert row["latency_ms_batch1"] == 4.0 and "latency_ms_batch1_std" not in row  # measured once
    assert row["test_rows"] == 100 and row["folds"] == 2 and row["extra_accuracy"] == {"m": 0.7}
    other = {**row, "candidate": "b", "f1": 0.95, "accuracy": 0.9, "extra_accuracy": {}}
    headers, cells = compare.table([row, other])
    assert [c[0] for c in cells] == ["b", "a"] and headers[-1] == "accuracy m"
    assert cells[1][1] == "0.8500 ± 0.0707" and cells[1][-1] == "0.7000" and cells[0][-1] == "nan"
    assert compare.accuracy_latency_plot([row]).startswith(b"\x89PNG")


def test_the_command_trains_the_chosen_candidate_on_the_same_data_and_settings():
    from steps import settings

    base = {s.name: s.default for s in settings.select("data", "max-length", "training")}
    base.update({"data": "my reviews.csv", "max-rows": 1200, "epochs": 1})
    row = {"candidate": "mpnet[learning-rate=0.0001,freeze-encoder=true]", "model": "mpnet"}
    command = compare.review_flow_command(row, base)
    assert command == ("python flows/review_flow.py run --data 'my reviews.csv' --max-rows 1200 --model mpnet "
                       "--epochs 1 --learning-rate 0.0001 --freeze-encoder")
    assert compare.review_flow_command({"candidate": "minilm", "model": "minilm"}, base).endswith(
        "--max-rows 1200 --model minilm --epochs 1")  # pinned: the default, auto, may train another model elsewhere


def test_a_tiny_candidate_is_trained_scored_and_measured(tiny_model_dir):
    parts = split_reviews(review_frame(400), seed=0)
    candidate = compare.parse_candidates(f"{tiny_model_dir}[epochs=4]")[0]
    values = compare.candidate_values({"max-length": 32, "batch-size": 16, "learning-rate": 3e-3, "seed": 0},
                                      candidate)
    other = review_frame(40, seed=3)
    row = compare.run_candidate(candidate, parts, values, extra={"other": other}, log=lambda line: None)
    assert row["accuracy"] > 0.8 and row["epochs_run"] == 4 and row["extra_accuracy"]["other"] > 0.8
    assert row["latency_ms_batch1"] > 0 and row["texts_per_s_batch64"] > 0 and row["size_bytes"] > 50_000
    assert row["parameters"] == sum(p.numel() for p in load_classifier(str(tiny_model_dir)).parameters())
    tfidf = compare.run_candidate(compare.parse_candidates("tfidf")[0], parts, {}, log=lambda line: None)
    assert tfidf["accuracy"] > 0.9 and tfidf["train_samples_per_s"] > 0 and tfidf["settings"].startswith("C=")
