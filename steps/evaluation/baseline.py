"""The classic baseline every run is measured against: TF-IDF over word 1-2 grams + logistic regression.

A well-tuned bag-of-words model is a strong baseline for sentiment; a transformer that does not beat it is not
worth promoting. It is trained on the same train split as the transformer (seconds on a CPU), scored on the same
test rows, and logged as an MLflow pyfunc model with the transformer's output columns (`label`,
`probability_positive`; steps/serving/baseline_model.py), so PredictFlow and CompareFlow can use it as a model.

The regularisation strength C is chosen by grouped, stratified cross-validation on the train split (the same
grouping as the split: by reviewId and identical text), by log-loss; with too few groups for that, C = 1. The
vectorizer is fitted once on the whole train split and only the logistic regression is cross-validated (the
idf weights then know the held-out folds' words, which can only nudge the choice of C; it is 5x faster).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from schemas import LABEL_COLUMN, TEXT_COLUMN

NAME = "tfidf"
DESCRIPTION = "TF-IDF (word 1-2 grams) + logistic regression"
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CV_FOLDS = 5
CV_GROUPS = 5_000  # review groups C is chosen on; the final fit uses every training row
MODEL_CODE = Path(__file__).resolve().parent.parent / "serving" / "baseline_model.py"
PIPELINE_FILE = "pipeline.joblib"
RUNTIME_PACKAGES = ("mlflow", "scikit-learn", "joblib", "pandas", "numpy", "scipy")


def build_pipeline(c: float = 1.0, seed: int = 0):
    """The unfitted pipeline: lower-cased word unigrams and bigrams, sublinear tf, L2 logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    return Pipeline([
        ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, lowercase=True, strip_accents="unicode")),
        ("logreg", LogisticRegression(C=c, solver="liblinear", max_iter=2000, random_state=seed)),
    ])


def choose_c(features, labels, groups, seed: int = 0) -> float:
    """C with the lowest grouped cross-validated log-loss of the logistic regression on the training rows'
    features (1.0 when there are too few groups for the folds). With more than CV_GROUPS groups (reviews), on a
    seeded sample of that many groups: on 100,000 training rows the full search took 156 s against 2.3 s so, and
    chose the same C (docs/benchmarks.md, ReviewFlow at a million rows); scikit-learn's grouped splitter is slow
    beyond a few thousand groups, and 7 values x 5 folds refit the model 35 times."""
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

    labels, groups = np.asarray(labels).astype(int), np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) > CV_GROUPS:  # a large table: choose C on a seeded sample of whole groups, fit on all rows
        kept = np.isin(groups, np.random.default_rng(seed).choice(unique, size=CV_GROUPS, replace=False))
        features, labels, groups = features[np.flatnonzero(kept)], labels[kept], groups[kept]
    if len(np.unique(groups)) < 2 * CV_FOLDS or np.bincount(labels, minlength=2).min() < CV_FOLDS:
        return 1.0
    splitter = StratifiedGroupKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(labels)), labels, groups))
    logreg = build_pipeline(seed=seed).named_steps["logreg"]
    scores = {c: cross_val_score(logreg.set_params(C=c), features, labels, cv=folds, scoring="neg_log_loss").mean()
              for c in C_GRID}
    return max(scores, key=scores.get)


def train_baseline(train_rows, seed: int = 0):
    """The fitted pipeline, trained on `train_rows` (canonical columns), C chosen by grouped CV."""
    import numpy as np

    from steps.data.split import group_keys

    texts = train_rows[TEXT_COLUMN].astype(str).tolist()
    labels = train_rows[LABEL_COLUMN].to_numpy().astype(int)
    if len(np.unique(labels)) < 2:
        from steps.runtime.errors import ReviewflowError

        raise ReviewflowError("the TF-IDF baseline needs both classes in the train split; add reviews of both")
    pipeline = build_pipeline(seed=seed)
    features = pipeline.named_steps["tfidf"].fit_transform(texts)
    c = choose_c(features, labels, group_keys(train_rows.reset_index(drop=True)), seed)
    pipeline.named_steps["logreg"].set_params(C=c).fit(features, labels)
    return pipeline


def positive_probabilities(pipeline, texts):
    import numpy as np

    return pipeline.predict_proba([str(t) for t in texts])[:, 1].astype(np.float64)


def parameter_count(pipeline) -> int:
    """Learned numbers: one weight per vocabulary entry, plus the intercept."""
    logreg = pipeline.named_steps["logreg"]
    return int(logreg.coef_.size + logreg.intercept_.size)


def serialized(pipeline) -> bytes:
    import io

    import joblib

    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return buffer.getvalue()


def pip_requirements() -> list[str]:
    from importlib import metadata

    return [f"{p}=={metadata.version(p).split('+', 1)[0]}" for p in RUNTIME_PACKAGES]


def log_baseline_model(pipeline, name: str = "baseline"):
    """Log the pipeline as an MLflow pyfunc (from code) in the active MLflow run; returns the ModelInfo.

    Same signature as the registered transformer: `reviewText` in, `label` out (`probability_positive` too with
    params={"output": "probabilities"}).
    """
    import tempfile

    import mlflow

    from steps.serving.package import model_signature

    with tempfile.TemporaryDirectory(prefix="reviewflow-baseline-") as tmp:
        path = Path(tmp) / PIPELINE_FILE
        path.write_bytes(serialized(pipeline))
        return mlflow.pyfunc.log_model(
            name=name, python_model=str(MODEL_CODE), artifacts={"pipeline": str(path)},
            model_config={"text_column": TEXT_COLUMN}, signature=model_signature(),
            pip_requirements=pip_requirements())


@dataclass
class BaselineResult:
    metrics: dict  # steps.evaluation.metrics.classification_metrics on the test rows
    probabilities: object  # np.ndarray: positive-class probability per test row, in row order
    c: float
    train_seconds: float
    parameters: int
    model_uri: str = ""  # the logged pyfunc (runs:/<evaluate run>/baseline); "" when not logged
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Plain data for Metaflow artifacts, the card and the run summary."""
        return {"name": NAME, "description": DESCRIPTION, "metrics": self.metrics, "c": self.c,
                "train_seconds": round(self.train_seconds, 2), "parameters": self.parameters,
                "model_uri": self.model_uri}


def fit_and_score(train_rows, test_rows, seed: int = 0) -> tuple[object, BaselineResult]:
    """(fitted pipeline, BaselineResult) for the baseline trained on `train_rows`, scored on `test_rows`."""
    from steps.evaluation.metrics import classification_metrics

    started = time.perf_counter()
    pipeline = train_baseline(train_rows, seed)
    seconds = time.perf_counter() - started
    probs = positive_probabilities(pipeline, test_rows[TEXT_COLUMN].tolist())
    metrics = classification_metrics(test_rows[LABEL_COLUMN].to_numpy(), probs)
    return pipeline, BaselineResult(metrics, probs, float(pipeline.named_steps["logreg"].C), seconds,
                                    parameter_count(pipeline))


def evaluate_baseline(run, train_rows, test_rows, seed: int = 0) -> BaselineResult:
    """The evaluate step's baseline: train, score, log `baseline_test_*` metrics and the model on `run`."""
    import mlflow

    pipeline, result = fit_and_score(train_rows, test_rows, seed)
    run.metrics({f"baseline_test_{k}": v for k, v in result.metrics.items()})
    run.metrics({"baseline_train_seconds": result.train_seconds, "baseline_parameters": result.parameters})
    run.params({"baseline": DESCRIPTION, "baseline_c": result.c})
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run.run_id:
        result.model_uri = f"runs:/{run.run_id}/baseline"
        log_baseline_model(pipeline)
        run.tags({"baseline_model_uri": result.model_uri})
    print(f"Baseline ({DESCRIPTION}, C={result.c:g}, trained in {result.train_seconds:.1f} s): accuracy "
          f"{result.metrics['accuracy']:.4f}, F1 {result.metrics['f1']:.4f} on the same test rows"
          + (f"; model {result.model_uri}" if result.model_uri else ""))
    return result
