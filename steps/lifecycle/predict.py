"""Batch prediction: score a file of reviews with a registered model, one row out per row in.

The model URI is pinned to a version before scoring (`models:/review-classifier@champion` -> `.../7`), so every
row is scored by the one version written next to it, even if `champion` moves while the job runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
CHUNK_ROWS = 1024  # rows handed to the model at a time (it batches them by --batch-size inside); progress steps


@dataclass
class ResolvedModel:
    uri: str  # what is loaded: pinned to a version for registry URIs
    name: str  # registered model name ("" for a run or path URI)
    version: str  # registered version ("" for a run or path URI)


def resolve_model_uri(mlflow_client, model_uri: str) -> ResolvedModel:
    """Pin `models:/<name>@<alias>` or `models:/<name>/<version>` to a version; other URIs pass unchanged."""
    from mlflow.exceptions import MlflowException

    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", model_uri.strip())
    if not match:
        if model_uri.startswith("models:/"):
            raise ReviewflowError(f"--model-uri {model_uri}: expected models:/<name>@<alias> or "
                                  "models:/<name>/<version>")
        return ResolvedModel(model_uri, "", "")
    name, alias, number = match.groups()
    try:
        version = (mlflow_client.get_model_version_by_alias(name, alias) if alias
                   else mlflow_client.get_model_version(name, number)).version
    except MlflowException:
        what = f"alias '{alias}'" if alias else f"version {number}"
        raise ReviewflowError(f"--model-uri {model_uri}: registered model '{name}' has no {what} in this MLflow "
                              "store; train one with `python flows/review_flow.py run` or check "
                              "MLFLOW_TRACKING_URI") from None
    return ResolvedModel(f"models:/{name}/{version}", name, str(version))


def check_output(path: str) -> str:
    kind = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise ReviewflowError(f"--output {path}: write .csv, .parquet or .jsonl (the extension picks the format)")
    return kind


def load_model(resolved: ResolvedModel, batch_size: int):
    import mlflow

    if batch_size < 1:
        raise ReviewflowError(f"--batch-size must be at least 1, got {batch_size}")
    return mlflow.pyfunc.load_model(resolved.uri, model_config={"batch_size": batch_size})


def predict_frame(model, reviews, resolved: ResolvedModel, log=None, progress_mode: str | None = None):
    """`reviews` with label, probability_positive, model_name and model_version appended, in input order.

    Progress (steps/runtime/progress.py): a bar, a line every ~10 s, or only the finish line; `log` receives the lines.
    """
    import pandas as pd

    from steps.runtime.progress import Progress

    parts = []
    with Progress("predict", len(reviews), "reviews", mode=progress_mode,
                  **({"log": log} if log is not None else {})) as progress:
        for start in range(0, len(reviews), CHUNK_ROWS):
            chunk = reviews.iloc[start:start + CHUNK_ROWS]
            texts = pd.DataFrame({TEXT_COLUMN: chunk[TEXT_COLUMN].fillna("").astype(str)})
            parts.append(model.predict(texts, params={"output": "probabilities"}))
            progress.update(len(chunk))
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"label": pd.Series(dtype="int64"), "probability_positive": pd.Series(dtype="float64")})
    out = reviews.reset_index(drop=True).copy()
    out["label"] = scores["label"].astype("int64").to_numpy()
    out["probability_positive"] = scores["probability_positive"].astype("float64").to_numpy()
    out["model_name"] = resolved.name or resolved.uri
    out["model_version"] = resolved.version
    return out


def write_predictions(frame, path: str) -> str:
    kind = check_output(path)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        frame.to_csv(target, index=False)
    elif kind == "parquet":
        frame.to_parquet(target, index=False)
    else:
        frame.to_json(target, orient="records", lines=True)
    return str(target.resolve())


def prediction_summary(frame) -> dict:
    """Counts for the log; accuracy too when the input carried labels."""
    from sklearn.metrics import accuracy_score

    summary = {"rows": int(len(frame)),
               "predicted_positive_share": round(float(frame["label"].mean()), 4) if len(frame) else 0.0}
    if LABEL_COLUMN in frame.columns and frame[LABEL_COLUMN].notna().any():
        known = frame[frame[LABEL_COLUMN].notna()]
        summary["labelled_rows"] = int(len(known))
        summary["accuracy_on_labelled_rows"] = round(float(accuracy_score(known[LABEL_COLUMN].astype(int),
                                                                          known["label"])), 4)
    return summary
