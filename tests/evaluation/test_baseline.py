"""The TF-IDF + logistic regression baseline: trained on the train split, scored on the test rows, C chosen by
grouped CV, logged as an MLflow model with the transformer's output columns."""
import mlflow
import numpy as np
import pandas as pd
import pytest

from steps.data.split import split_reviews
from steps.evaluation import baseline
from steps.runtime import tracking
from steps.runtime.errors import ReviewflowError
from steps.serving.package import model_signature
from tests.fixtures import review_frame
from tests.flow_runs import store_client


@pytest.fixture(scope="module")
def parts():
    return split_reviews(review_frame(300), seed=0)


def test_trained_on_the_train_split_and_scored_on_the_test_rows(parts):
    pipeline, result = baseline.fit_and_score(parts.train, parts.test, seed=0)
    assert result.metrics["rows"] == len(parts.test) and result.metrics["accuracy"] > 0.9
    assert result.c in baseline.C_GRID  # chosen by grouped cross-validation: 300 rows are enough groups
    vocabulary = pipeline.named_steps["tfidf"].vocabulary_
    assert any(" " in term for term in vocabulary)  # word bigrams
    train_words = {w.strip(".!").lower() for t in parts.train["reviewText"] for w in t.split()}
    assert {term for term in vocabulary if " " not in term} <= train_words  # nothing learned from test rows
    assert result.parameters == len(vocabulary) + 1
    np.testing.assert_allclose(result.probabilities,
                               baseline.positive_probabilities(pipeline, parts.test["reviewText"]))


def test_on_many_groups_c_is_chosen_on_a_seeded_sample_of_whole_groups(parts, monkeypatch):
    """A large table chooses C on CV_GROUPS of its review groups (all rows of each), the same ones every time."""
    from steps.data.split import group_keys

    train = parts.train.reset_index(drop=True)
    features = baseline.build_pipeline().named_steps["tfidf"].fit_transform(train["reviewText"])
    labels, groups = train["isPositive"].to_numpy(), group_keys(train)
    monkeypatch.setattr(baseline, "CV_GROUPS", 60)
    sampled = np.isin(groups, np.random.default_rng(0).choice(np.unique(groups), size=60, replace=False))
    from sklearn.model_selection import StratifiedGroupKFold

    seen, split = [], StratifiedGroupKFold.split  # which rows the folds are cut from
    monkeypatch.setattr(StratifiedGroupKFold, "split",
                        lambda self, x, y, g: seen.append(len(y)) or split(self, x, y, g))
    chosen = baseline.choose_c(features, labels, groups, seed=0)
    assert seen == [int(sampled.sum())] and sampled.sum() < len(train)  # the folds were cut from the sample only
    monkeypatch.setattr(baseline, "CV_GROUPS", 10**9)
    assert chosen == baseline.choose_c(features[np.flatnonzero(sampled)], labels[sampled], groups[sampled], seed=0)


def test_few_groups_fall_back_to_c_1_and_one_class_is_refused():
    few = review_frame(12)
    assert baseline.train_baseline(few).named_steps["logreg"].C == 1.0
    with pytest.raises(ReviewflowError, match="both classes"):
        baseline.train_baseline(few[few["isPositive"] == 1])


def test_logged_as_a_pyfunc_with_the_transformers_columns(tracking_uri, parts):
    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "1", {})
    with tracking.step_run(tracking_uri, parent, "evaluate", "ReviewFlow/1/evaluate/7") as run:
        result = baseline.evaluate_baseline(run, parts.train, parts.test, seed=0)
    assert result.model_uri == f"runs:/{run.run_id}/baseline"
    logged = store_client(tracking_uri).get_run(run.run_id)
    assert logged.data.metrics["baseline_test_f1"] == pytest.approx(result.metrics["f1"])
    assert logged.data.tags["baseline_model_uri"] == result.model_uri
    model = mlflow.pyfunc.load_model(result.model_uri)
    assert model.metadata.get_output_schema() == model_signature().outputs
    assert model.metadata.get_input_schema() == model_signature().inputs
    assert model.predict(pd.DataFrame({"reviewText": ["great"]})).name == "label"  # labels alone by default
    out = model.predict(pd.DataFrame({"reviewText": parts.test["reviewText"]}), params={"output": "probabilities"})
    assert out.columns.tolist() == ["label", "probability_positive"] and out["label"].dtype == "int64"
    np.testing.assert_allclose(out["probability_positive"], result.probabilities)
    assert result.summary()["model_uri"] == result.model_uri and result.summary()["metrics"] == result.metrics
