"""Batch prediction: the model to score with, the output to write, scoring rows, and counting what was scored.

The model URI is pinned to a version before scoring (`models:/review-classifier@champion` -> `.../7`), so every
row is scored by the one version written next to it, even if `champion` moves while the job runs. The output is a
local path or an s3:// URI: one file as CSV, Parquet or JSON Lines (CSV and JSON Lines optionally .gz/.bz2/.xz),
chosen by the name's extension, or a directory of Parquet parts (a name ending in /). A row without text gets no
label, only the reason. With REVIEWFLOW_INFERENCE_LOG set, every scored text is also written to the inference log
(steps/serving/inference_log.py) that MonitorFlow reads. How the rows are read, sharded and written:
steps/lifecycle/shards.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}
OUTPUT_COMPRESSIONS = (".gz", ".bz2", ".xz")  # CSV and JSON Lines only; Parquet compresses inside the file
MISSING_TEXT, BLANK_TEXT = "missing_text", "blank_text"  # why a row gets no label
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
        if re.fullmatch(r"models:/m-[0-9a-f]+", model_uri.strip()):  # an MLflow 3 LoggedModel id: unversioned
            return ResolvedModel(model_uri.strip(), "", "")
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


def is_directory_output(path: str) -> bool:
    """`--output` names a directory of parts (ends in "/", or is an existing local directory), not one file."""
    from steps.runtime import storage

    return path.endswith("/") or (not storage.is_s3(path) and Path(path).expanduser().is_dir())


def check_output(path: str) -> str:
    """csv | parquet | jsonl, from the extension of `--output` (a local path or an s3:// URI); `directory` for a
    directory of Parquet parts with a manifest."""
    if is_directory_output(path):
        return "directory"
    name = PurePosixPath(path[len("s3://"):]).name if path.startswith("s3://") else Path(path).name
    suffixes = [s.lower() for s in PurePosixPath(name).suffixes]
    compressed = bool(suffixes) and suffixes[-1] in OUTPUT_COMPRESSIONS
    kind = OUTPUT_FORMATS.get(suffixes[-2] if compressed and len(suffixes) > 1 else suffixes[-1] if suffixes else "")
    if kind is None or (compressed and kind == "parquet"):
        raise ReviewflowError(f"--output {path}: write .csv, .parquet or .jsonl (the extension picks the format; "
                              ".csv and .jsonl may end in .gz, .bz2 or .xz), or end it in / for a directory of "
                              "Parquet parts with a manifest")
    return kind


def check_output_location(path: str) -> str:
    """Before any work: the format; for s3:// that the URI names an object (or a prefix) in a bucket that can be
    reached; for a directory that it holds no earlier predictions (their parts would mix with these)."""
    from steps.runtime import storage

    kind = check_output(path)
    if storage.is_s3(path):
        location = storage.parse_s3(path)
        if not location.key or (location.key.endswith("/") and kind != "directory"):
            raise ReviewflowError(f"--output {path}: name the object, e.g. s3://{location.bucket}/predictions.parquet"
                                  f", or a prefix for parts, e.g. s3://{location.bucket}/predictions/")
        try:
            storage.check_bucket(path)
        except ReviewflowError as err:
            raise ReviewflowError(f"--output {path}: {err}") from None
        taken = kind == "directory" and storage.list_objects(path)
    else:
        folder = Path(path).expanduser()
        taken = kind == "directory" and folder.is_dir() and any(folder.iterdir())
    if taken:
        raise ReviewflowError(f"--output {path}: the directory is not empty; give a new one (parts of two runs "
                              "must not mix), or delete what is there. A failed run is continued with `resume`, "
                              "which keeps its output.")
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


def unscored_reasons(texts, given=None):
    """Why each row cannot be scored, <NA> where it can: `missing_text` (no text: an empty cell, null or a missing
    marker such as NaN), `blank_text` (only whitespace), or the reason already `given` (a repeated header line)."""
    import pandas as pd

    texts = pd.Series(texts).astype("string").reset_index(drop=True)
    reasons = (pd.Series(pd.NA, index=texts.index, dtype="string") if given is None
               else pd.Series(given).astype("string").reset_index(drop=True))
    open_ = reasons.isna()
    empty = (texts == "").fillna(True)
    reasons[open_ & empty] = MISSING_TEXT
    reasons[open_ & ~empty & (texts.str.strip() == "").fillna(False)] = BLANK_TEXT
    return reasons


def score_rows(model, frame, resolved: ResolvedModel, inference_log=None):
    """`frame` (canonical rows to score) with label (Int64), probability_positive, unscored_reason, model_name and
    model_version appended, in its order. A row without text gets no label or probability, only its reason
    (`unscored_reasons`); an `unscored_reason` column already in `frame` is kept. Scores go to `inference_log`."""
    import numpy as np
    import pandas as pd

    out = frame.reset_index(drop=True)
    reasons = unscored_reasons(out[TEXT_COLUMN], out.get("unscored_reason"))
    scored = np.flatnonzero(reasons.isna().to_numpy())
    labels = pd.array(np.full(len(out), pd.NA), dtype="Int64")
    probabilities = np.full(len(out), np.nan)
    name, version = resolved.name or resolved.uri, resolved.version
    if len(scored):
        texts = out[TEXT_COLUMN].iloc[scored].astype(str)
        scores = model.predict(pd.DataFrame({TEXT_COLUMN: texts.to_numpy()}), params={"output": "probabilities"})
        labels[scored] = scores["label"].astype("int64").to_numpy()
        probabilities[scored] = scores["probability_positive"].astype("float64").to_numpy()
        if inference_log is not None:
            inference_log.record(texts.tolist(), scores["label"].tolist(), scores["probability_positive"].tolist(),
                                 name, version)
    return out.drop(columns=["unscored_reason"], errors="ignore").assign(
        label=labels, probability_positive=probabilities, unscored_reason=reasons.array,
        model_name=name, model_version=version)


def tally(frame) -> dict:
    """Additive counts of scored rows (a shard's, summed across shards): rows, scored, unscored per reason,
    predicted positives, labelled scored rows and how many of those the model got right."""
    scored = frame["unscored_reason"].isna() if "unscored_reason" in frame else frame["label"].notna()
    counts = {"rows": int(len(frame)), "scored": int(scored.sum()),
              "positive": int((frame["label"][scored] == 1).sum())}
    for reason, n in frame["unscored_reason"][~scored].value_counts().items() if "unscored_reason" in frame else ():
        counts[f"unscored_{reason}"] = int(n)
    if LABEL_COLUMN in frame.columns:
        known = scored & frame[LABEL_COLUMN].notna()
        counts["labelled"] = int(known.sum())
        counts["correct"] = int((frame[LABEL_COLUMN][known].astype(int) == frame["label"][known].astype(int)).sum())
    return counts


def add_tallies(*tallies: dict) -> dict:
    total: dict = {}
    for counts in tallies:
        for key, n in counts.items():
            total[key] = total.get(key, 0) + n
    return total


def summarize(counts: dict) -> dict:
    """The summary of `tally` counts: rows, unscored rows (and per reason), the predicted positive share of the
    scored rows, and accuracy on the labelled scored rows."""
    summary = {"rows": counts.get("rows", 0), "scored_rows": counts.get("scored", 0),
               "unscored_rows": counts.get("rows", 0) - counts.get("scored", 0),
               **{k: v for k, v in sorted(counts.items()) if k.startswith("unscored_")},
               "predicted_positive_share": round(counts["positive"] / counts["scored"], 4)
               if counts.get("scored") else 0.0}
    if counts.get("labelled"):
        summary["labelled_rows"] = counts["labelled"]
        summary["accuracy_on_labelled_rows"] = round(counts["correct"] / counts["labelled"], 4)
    return summary


def run_summary(results: list[dict]) -> dict:
    """PredictFlow's summary from its shards' results (steps/lifecycle/shards.score_shard): the counts of
    `summarize`, then speed over the time in which any shard was reading, scoring or writing (a shard a `resume`
    cloned keeps its own run's times; the pause between the runs does not count), the slowest model load, the
    largest peak memory and, with --explain, the explanations' cost."""
    summary = summarize(add_tallies(*(r["counts"] for r in results)))
    seconds = busy_seconds([(r["scoring_started"], r["scoring_finished"]) for r in results])
    summary.update(scoring_seconds=round(seconds, 3), shards=len(results),
                   texts_per_s=round(summary["scored_rows"] / seconds, 2) if seconds > 0 else 0.0,
                   model_load_seconds=max(r.get("model_load_seconds", 0.0) for r in results),
                   peak_rss_mb=max(r["peak_rss_mb"] for r in results))
    explained = [r["explain"] for r in results if r.get("explain")]
    if explained:
        done = sum(e["explained"] for e in explained)
        summary.update(explain_explained=done, explain_max_abs_delta=max(e["max_abs_delta"] for e in explained),
                       explain_seconds_per_review=round(sum(e["seconds_per_review"] * e["explained"]
                                                            for e in explained) / done, 4) if done else 0.0)
    return summary


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of the (start, end) spans."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
