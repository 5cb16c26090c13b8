"""Batch prediction: score a file of reviews with a registered model, one row out per row in.

The model URI is pinned to a version before scoring (`models:/review-classifier@champion` -> `.../7`), so every
row is scored by the one version written next to it, even if `champion` moves while the job runs. The output goes
to a local path or an s3:// URI as CSV, Parquet or JSON Lines (CSV and JSON Lines optionally .gz/.bz2/.xz),
chosen by the name's extension. With REVIEWFLOW_INFERENCE_LOG set, every scored text is also written to the
inference log (steps/serving/inference_log.py) that MonitorFlow reads.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
OUTPUT_COMPRESSIONS = (".gz", ".bz2", ".xz")  # CSV and JSON Lines only; Parquet compresses inside the file
CHUNK_ROWS = 1024  # rows handed to the model at a time (it batches them by --batch-size inside); progress steps
INFERENCE_LOG_CONFIG = "inference_log"  # model_config key: a served model that logs by itself is told not to


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
    """csv | parquet | jsonl, from the extension of `--output` (a local path or an s3:// URI)."""
    name = PurePosixPath(path[len("s3://"):]).name if path.startswith("s3://") else Path(path).name
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in OUTPUT_COMPRESSIONS
    kind = OUTPUT_FORMATS.get(suffixes[-2] if compressed and len(suffixes) > 1 else suffixes[-1] if suffixes else "")
    if kind is None or (compressed and kind == "parquet"):
        raise ReviewflowError(f"--output {path}: write .csv, .parquet or .jsonl (the extension picks the format; "
                              ".csv and .jsonl may end in .gz, .bz2 or .xz)")
    return kind


def check_output_location(path: str) -> str:
    """Before any work: the format, and for s3:// that the URI names an object in a bucket that can be reached."""
    from steps.runtime import storage

    kind = check_output(path)
    if storage.is_s3(path):
        location = storage.parse_s3(path)
        if not location.key or location.key.endswith("/"):
            raise ReviewflowError(f"--output {path}: name the object, e.g. s3://{location.bucket}/predictions.parquet")
        try:
            storage.check_bucket(path)
        except ReviewflowError as err:
            raise ReviewflowError(f"--output {path}: {err}") from None
    return kind


def load_model(resolved: ResolvedModel, batch_size: int):
    """The pyfunc, batching by `batch_size`; a model that writes the inference log itself is told not to (the
    caller logs, with the pinned version)."""
    import mlflow

    if batch_size < 1:
        raise ReviewflowError(f"--batch-size must be at least 1, got {batch_size}")
    config = {"batch_size": batch_size}
    try:
        logged = mlflow.models.get_model_info(resolved.uri).flavors.get("python_function", {}).get("config") or {}
    except Exception:  # not loadable as model info: load_model below raises the real error
        logged = {}
    if INFERENCE_LOG_CONFIG in logged:
        config[INFERENCE_LOG_CONFIG] = False
    return mlflow.pyfunc.load_model(resolved.uri, model_config=config)


def predict_frame(model, reviews, resolved: ResolvedModel, log=None, progress_mode: str | None = None,
                  inference_log=None):
    """`reviews` with label, probability_positive, model_name and model_version appended, in input order.

    Progress (steps/runtime/progress.py): a bar, a line every ~10 s, or only the finish line; `log` receives the lines.
    `inference_log` (steps/serving/inference_log.InferenceLog), when given, records every scored chunk.
    """
    import pandas as pd

    from steps.runtime.progress import Progress

    parts = []
    name, version = resolved.name or resolved.uri, resolved.version
    with Progress("predict", len(reviews), "reviews", mode=progress_mode,
                  **({"log": log} if log is not None else {})) as progress:
        for start in range(0, len(reviews), CHUNK_ROWS):
            texts = reviews[TEXT_COLUMN].iloc[start:start + CHUNK_ROWS].fillna("").astype(str)
            scores = model.predict(pd.DataFrame({TEXT_COLUMN: texts}), params={"output": "probabilities"})
            parts.append(scores)
            if inference_log is not None:
                inference_log.record(texts.tolist(), scores["label"].tolist(), scores["probability_positive"].tolist(),
                                     name, version)
            progress.update(len(texts))
    scores = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"label": pd.Series(dtype="int64"), "probability_positive": pd.Series(dtype="float64")})
    out = reviews.reset_index(drop=True).copy()
    out["label"] = scores["label"].astype("int64").to_numpy()
    out["probability_positive"] = scores["probability_positive"].astype("float64").to_numpy()
    out["model_name"] = name
    out["model_version"] = version
    return out


def output_frame(predictions, text_column: str = ""):
    """The rows as written: the text under the input's own column name (--text-column) when it had another."""
    if text_column and text_column != TEXT_COLUMN:
        return predictions.rename(columns={TEXT_COLUMN: text_column})
    return predictions


def _write_local(frame, target: Path, kind: str) -> None:
    if kind == "csv":
        frame.to_csv(target, index=False)  # compression from the suffix (.gz, .bz2, .xz)
    elif kind == "parquet":
        frame.to_parquet(target, index=False)
    else:
        frame.to_json(target, orient="records", lines=True, force_ascii=False)


def write_predictions(frame, path: str) -> str:
    """Write `frame` to a local path (folders created) or an s3:// URI; returns the absolute path or the URI."""
    from steps.runtime import storage

    kind = check_output(path)
    if storage.is_s3(path):
        with tempfile.TemporaryDirectory(prefix="reviewflow-predictions-") as tmp:
            local = Path(tmp) / PurePosixPath(storage.parse_s3(path).key).name
            _write_local(frame, local, kind)
            return storage.upload_file(local, path)
    target = Path(path).expanduser()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_local(frame, target, kind)
    except OSError as err:
        raise ReviewflowError(f"--output {path}: cannot write there: {err.strerror or err}") from None
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
