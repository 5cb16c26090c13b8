"""Monitoring: read what the served model was asked since the last check, and tell whether it drifted.

The inference log (steps/serving/inference_log.py) is a directory or s3:// prefix of files whose names sort by
the time they were written. A check reads the files after the WATERMARK (the newest file the previous check of
the same log processed) that are older than `settle_seconds` (a file still being written elsewhere, or written by a
host whose clock runs a little behind, is left for the next check), and compares their records with the current
champion:

- input side, with validate's drift code (steps/data/drift.py) against the champion's training profile: text
  length (characters and tokens), charset, vocabulary coverage (out-of-vocabulary rate). PSI >= 0.25 is drift.
- prediction side:
  - predicted_positive: the share of texts predicted positive against the share of positive labels the champion
    was trained on, as a PSI over the two classes (the profile's `label` feature); PSI >= 0.25 is drift.
  - confidence: the histogram of confidence = max(p, 1 - p) in CONFIDENCE_EDGES bins against the champion's own
    predictions on its test split (when the ReviewFlow run that trained it is readable); PSI >= 0.25 is drift.
  - low_confidence: the share of predictions with confidence below LOW_CONFIDENCE (0.7, i.e. 0.3 < p < 0.7);
    drift when it is LOW_CONFIDENCE_RISE (0.10) or more above the champion's share on its test split, or, without
    that reference, when it reaches LOW_CONFIDENCE_SHARE (0.25).

Fewer than `min_records` new records: the check says so, claims nothing, and does not move the watermark (the
records are looked at again, with the next ones, by the next check).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from schemas import TEXT_COLUMN
from steps.data import drift
from steps.runtime.errors import ReviewflowError
from steps.serving import inference_log

MIN_RECORDS = 200
SETTLE_SECONDS = 120
LOW_CONFIDENCE = 0.7
LOW_CONFIDENCE_RISE = 0.10
LOW_CONFIDENCE_SHARE = 0.25
CONFIDENCE_EDGES = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
PREDICTION_FEATURES = ("predicted_positive", "confidence", "low_confidence")
WATERMARK_TAG = "monitor_watermark"  # on the MLflow run of a finished check: the newest file it processed
LOG_ID_TAG = "monitor_log_id"  # a short hash of the log location: which log a check ran on
LOG_TAG = "monitor_log"


# ---------------------------------------------------------------------------------------------- the log


def normalize_location(location: str) -> str:
    """One spelling per log: s3://bucket/prefix without a trailing slash, or an absolute local path."""
    location = (location or "").strip()
    if not location:
        raise ReviewflowError("--log: give the inference log's location, the REVIEWFLOW_INFERENCE_LOG value where "
                              "the model is served (a directory or s3://bucket/prefix)")
    if location.startswith("s3://"):
        from steps.runtime import storage

        storage.parse_s3(location)
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


def location_id(location: str) -> str:
    return hashlib.sha256(location.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LogFile:
    key: str  # path relative to the log location, e.g. 2026-11-22/20261122T181347.274123Z_host_12_000001.jsonl
    source: str  # absolute local path or s3:// URI
    written: dt.datetime  # from the file name


def list_new_files(location: str, after: str = "", settle_seconds: float = SETTLE_SECONDS,
                   now: dt.datetime | None = None) -> tuple[list[LogFile], int]:
    """(log files after the watermark `after` that are old enough to read, in order; how many newer ones wait)."""
    now = now or dt.datetime.now(dt.UTC)
    keys = []
    if location.startswith("s3://"):
        from steps.runtime import storage

        prefix = location + "/"
        for uri in storage.list_objects(prefix, suffixes=inference_log.SUFFIXES, start_after=after):
            keys.append((uri[len(prefix):], uri))
    else:
        root = Path(location)
        if not root.is_dir():
            raise ReviewflowError(
                f"--log {location}: no such directory. Give the directory set as REVIEWFLOW_INFERENCE_LOG where the "
                "model is served (it appears with the first logged request).")
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith(".") and path.suffix in inference_log.SUFFIXES:
                keys.append((path.relative_to(root).as_posix(), str(path)))
    ready, waiting = [], 0
    for key, source in sorted(keys):
        written = inference_log.file_time(key.rsplit("/", 1)[-1])
        if written is None or key <= after:
            continue  # not a log file by its name, or already processed
        if (now - written).total_seconds() < settle_seconds:
            waiting += 1
            continue
        ready.append(LogFile(key, source, written))
    return ready, waiting


def read_records(files: list[LogFile]):
    """(the records of `files` as one DataFrame with the log's columns, [(key, why) of files that were unreadable])."""
    import pandas as pd

    from steps.data.readers import read_file
    from steps.runtime import storage

    parts, unreadable = [], []
    for log_file in files:
        source = storage.S3Object(log_file.source) if storage.is_s3(log_file.source) else Path(log_file.source)
        try:
            frame = read_file(source)
            missing = [c for c in ("text", "label", "probability_positive") if c not in frame.columns]
            if missing:
                raise ReviewflowError(f"not an inference log file: no {missing} column(s)")
        except ReviewflowError as err:
            unreadable.append((log_file.key, str(err).splitlines()[0][:300]))
            continue
        parts.append(frame)
    if not parts:
        return pd.DataFrame({name: pd.Series(dtype="object") for name in inference_log.FIELDS}), unreadable
    frame = pd.concat(parts, ignore_index=True)
    frame["text"] = frame["text"].astype("string").fillna("")
    frame["label"] = pd.to_numeric(frame["label"], errors="coerce").fillna(0).astype("int64")
    frame["probability_positive"] = pd.to_numeric(frame["probability_positive"], errors="coerce").astype("float64")
    for column in ("model_name", "model_version", "time"):
        if column in frame.columns:
            frame[column] = frame[column].astype("string")
    return frame, unreadable


def last_watermark(mlflow_client, experiment_id: str | None, location: str) -> tuple[str, str | None]:
    """(the watermark, the MLflow run id it came from) of the newest finished check of `location`; ("", None) if
    none yet."""
    if experiment_id is None:
        return "", None
    runs = mlflow_client.search_runs(
        [experiment_id], f"tags.{LOG_ID_TAG} = '{location_id(location)}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return "", None
    return runs[0].data.tags.get(WATERMARK_TAG, ""), runs[0].info.run_id


# ---------------------------------------------------------------------------------------------- the checks


def confidence(probabilities):
    import numpy as np

    p = np.asarray(probabilities, dtype=float)
    return np.maximum(p, 1 - p)


def confidence_shares(probabilities) -> list[float]:
    """Share of predictions per confidence bin (CONFIDENCE_EDGES; the last bin includes 1.0)."""
    import numpy as np

    values = confidence(probabilities)
    if not len(values):
        return [0.0] * (len(CONFIDENCE_EDGES) - 1)
    counts, _ = np.histogram(np.clip(values, 0.5, 1.0), bins=CONFIDENCE_EDGES)
    return (counts / len(values)).tolist()


def low_confidence_share(probabilities) -> float:
    values = confidence(probabilities)
    return float((values < LOW_CONFIDENCE).mean()) if len(values) else 0.0


def prediction_checks(frame, profile: dict | None, reference_probabilities=None) -> tuple[list[dict], list[str]]:
    """The prediction-side checks (see the module docstring), each as {name, value, level, reference, new, ...}."""
    import numpy as np

    checks, notes = [], []
    probabilities = frame["probability_positive"].to_numpy(dtype=float)
    positive = float((frame["label"].to_numpy() == 1).mean()) if len(frame) else 0.0
    if profile is not None:
        trained = profile["features"]["label"]["shares"]
        new = {"0": 1 - positive, "1": positive}
        value = drift.psi(list(trained.values()), [new[k] for k in trained])
        checks.append({"name": "predicted_positive", "measure": "PSI", "value": round(value, 6),
                       "level": drift.level(value), "threshold": drift.PSI_DRIFT,
                       "reference": f"trained on {trained['1']:.1%} positive",
                       "new": f"{positive:.1%} predicted positive",
                       "bins": list(trained), "training_shares": list(trained.values()),
                       "new_shares": [new[k] for k in trained]})
    new_shares = confidence_shares(probabilities)
    share = low_confidence_share(probabilities)
    bins = [f"{low:.1f}-{high:.1f}" for low, high in zip(CONFIDENCE_EDGES, CONFIDENCE_EDGES[1:])]
    if reference_probabilities is not None and len(reference_probabilities):
        reference = np.asarray(reference_probabilities, dtype=float)
        reference_shares = confidence_shares(reference)
        value = drift.psi(reference_shares, new_shares)
        checks.append({"name": "confidence", "measure": "PSI", "value": round(value, 6), "level": drift.level(value),
                       "threshold": drift.PSI_DRIFT, "reference": f"champion on its {len(reference)} test reviews",
                       "new": f"median {float(np.median(confidence(probabilities))):.3f}" if len(probabilities) else "",
                       "bins": bins, "training_shares": reference_shares, "new_shares": new_shares})
        reference_share = low_confidence_share(reference)
        rise = share - reference_share
        checks.append({"name": "low_confidence", "measure": "rise", "value": round(rise, 6),
                       "level": "drift" if rise >= LOW_CONFIDENCE_RISE else
                       "moderate" if rise >= LOW_CONFIDENCE_RISE / 2 else "stable",
                       "threshold": LOW_CONFIDENCE_RISE, "share": round(share, 6),
                       "reference": f"{reference_share:.1%} below {LOW_CONFIDENCE} on the test split",
                       "new": f"{share:.1%} below {LOW_CONFIDENCE}"})
    else:
        notes.append("no reference for the confidence histogram (the champion's test-split predictions are not "
                     f"readable here); low-confidence share judged against {LOW_CONFIDENCE_SHARE:.0%}")
        checks.append({"name": "low_confidence", "measure": "share", "value": round(share, 6),
                       "level": "drift" if share >= LOW_CONFIDENCE_SHARE else
                       "moderate" if share >= LOW_CONFIDENCE_SHARE / 2 else "stable",
                       "threshold": LOW_CONFIDENCE_SHARE, "share": round(share, 6), "reference": "(none)",
                       "new": f"{share:.1%} below {LOW_CONFIDENCE}", "bins": bins, "new_shares": new_shares})
    return checks, notes


LEVELS = ("stable", "moderate", "drift")


@dataclass
class MonitorReport:
    status: str  # too_few | no_champion | no_profile | stable | moderate | drift
    records: int
    min_records: int
    champion_version: int | None = None
    input_features: list[dict] = field(default_factory=list)  # validate's drift features (PSI)
    prediction_features: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    served_by: dict = field(default_factory=dict)  # "name v3" -> records
    low_confidence: float | None = None
    positive_share: float | None = None

    @property
    def drift(self) -> bool:
        return self.status == "drift"

    @property
    def judged(self) -> bool:
        """Whether the window was compared at all (enough records, a champion with a profile)."""
        return self.status in LEVELS

    @property
    def drift_tag(self) -> str:
        """The `drift` tag: true, false, or not_judged (too few records, no champion or profile), so that a
        dashboard never reads "no drift" where nothing was compared."""
        return str(self.drift).lower() if self.judged else "not_judged"

    @property
    def drifted(self) -> list[str]:
        return [f["name"] for f in self.input_features + self.prediction_features if f["level"] == "drift"]

    def metrics(self) -> dict:
        out = {"records": self.records}
        if self.judged:  # a 0 would plot as "no drift" where nothing was compared
            out["drift"] = int(self.drift)
        out.update({f"drift_psi_{f['name']}": f["psi"] for f in self.input_features})
        out.update({f"prediction_{f['name']}_{f['measure'].lower()}": f["value"] for f in self.prediction_features})
        if self.positive_share is not None:
            out["predicted_positive_share"] = round(self.positive_share, 6)
        if self.low_confidence is not None:
            out["low_confidence_share"] = round(self.low_confidence, 6)
        if self.judged:
            out["drift_features_drifted"] = len(self.drifted)
        return out

    def describe(self) -> str:
        if self.status == "too_few":
            return (f"Too few new records to judge drift: {self.records} since the last check, at least "
                    f"{self.min_records} needed (--min-records). No drift claimed; they count again next time.")
        if not self.judged:
            return "Drift not checked: " + "; ".join(self.notes)
        head = "DRIFT" if self.drift else self.status
        lines = [f"{head}: {self.records} records against champion v{self.champion_version} "
                 f"(PSI >= {drift.PSI_DRIFT} = drift, >= {drift.PSI_MODERATE} = moderate)"]
        for f in self.input_features:
            lines.append(f"  input {f['name']}: PSI {f['psi']:.3f} ({f['level']}); training {f['reference']}; "
                         f"new {f['new']}")
        for f in self.prediction_features:
            lines.append(f"  prediction {f['name']}: {f['measure']} {f['value']:.3f} ({f['level']}, threshold "
                         f"{f['threshold']}); {f['reference']}; new {f['new']}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {**self.__dict__, "drift": self.drift, "judged": self.judged, "drift_tag": self.drift_tag,
                "drifted": self.drifted, "thresholds": thresholds()}


def thresholds() -> dict:
    return {"psi_drift": drift.PSI_DRIFT, "psi_moderate": drift.PSI_MODERATE, "low_confidence": LOW_CONFIDENCE,
            "low_confidence_rise": LOW_CONFIDENCE_RISE, "low_confidence_share": LOW_CONFIDENCE_SHARE,
            "confidence_edges": CONFIDENCE_EDGES}


def served_by(frame) -> dict:
    if not len(frame) or "model_version" not in frame.columns:
        return {}
    names = frame["model_name"].fillna("?") if "model_name" in frame.columns else "?"
    keys = (names + " v" + frame["model_version"].fillna("?")).value_counts()
    return {str(k): int(v) for k, v in keys.items()}


def check_window(frame, profile: dict | None, champion_version: int | None, why_no_profile: str = "",
                 load_tokenizer=None, reference_probabilities=None, min_records: int = MIN_RECORDS,
                 registered_model: str = "", seed: int = 0) -> MonitorReport:
    """Compare the log records in `frame` with the champion (its training profile, its test-split predictions)."""
    report = MonitorReport(status="too_few", records=int(len(frame)), min_records=min_records,
                           champion_version=champion_version, served_by=served_by(frame))
    if len(frame) < min_records:
        return report
    report.positive_share = float((frame["label"] == 1).mean())
    report.low_confidence = low_confidence_share(frame["probability_positive"].to_numpy(dtype=float))
    if profile is None:
        report.status = "no_champion" if champion_version is None else "no_profile"
        report.notes.append(why_no_profile)
        return report
    texts = frame[["text"]].rename(columns={"text": TEXT_COLUMN})
    inputs = drift.compare_with_tokenizer(profile, texts, load_tokenizer, champion_version, seed)
    report.input_features = inputs.features
    report.prediction_features, notes = prediction_checks(frame, profile, reference_probabilities)
    report.notes = inputs.notes + notes
    others = {k: v for k, v in report.served_by.items()
              if not (registered_model and k == f"{registered_model} v{champion_version}")}
    if others and registered_model:
        report.notes.append(f"records served by another model than champion v{champion_version}: {others}")
    worst = max((LEVELS.index(f["level"]) for f in report.input_features + report.prediction_features), default=0)
    report.status = LEVELS[worst]
    return report


# ---------------------------------------------------------------------------------------------- plots


def monitor_plots(report: MonitorReport) -> dict[str, bytes]:
    """PNG figures: the input features (training vs logged shares per bin) and the prediction side."""
    import numpy as np

    from steps.runtime.plots import figure, png

    plots = {}
    if report.input_features:
        features = report.input_features
        fig, axes = figure((8.0, 2.6 * ((len(features) + 1) // 2)), (len(features) + 1) // 2, 2)
        axes = axes if isinstance(axes, list) else [axes]
        for ax, f in zip(axes, features):
            _bars(ax, f["bins"], f["training_shares"], f["new_shares"], "training", "logged")
            ax.set_title(f"{f['name']}: PSI {f['psi']:.3f} ({f['level']})", fontsize=10)
        for ax in axes[len(features):]:
            ax.set_visible(False)
        plots["input_drift.png"] = png(fig)
    if report.prediction_features:
        histogram = next((f for f in report.prediction_features
                          if "new_shares" in f and f["name"] != "predicted_positive"), None)
        share = next((f for f in report.prediction_features if f["name"] == "predicted_positive"), None)
        fig, (left, right) = figure((8.0, 3.4), 1, 2)
        if histogram is not None:
            _bars(left, histogram["bins"], histogram.get("training_shares"), histogram["new_shares"],
                  "champion, test split", "logged")
            left.axvline(np.searchsorted(CONFIDENCE_EDGES, LOW_CONFIDENCE) - 0.5, color="#999", linestyle="--",
                         linewidth=1)
            psi_note = (f"PSI {histogram['value']:.3f} ({histogram['level']}); " if histogram["name"] == "confidence"
                        else "")
            left.set_title(f"confidence max(p, 1-p): {psi_note}low < {LOW_CONFIDENCE} (dashed)", fontsize=10)
            left.set_xlabel("confidence")
        if share is not None:
            _bars(right, ["negative", "positive"], share["training_shares"], share["new_shares"],
                  "training labels", "predicted")
            right.set_title(f"class shares: PSI {share['value']:.3f} ({share['level']})", fontsize=10)
        plots["prediction_drift.png"] = png(fig)
    return plots


def _bars(ax, bins, reference, new, reference_label: str, new_label: str) -> None:
    import numpy as np

    x = np.arange(len(bins))
    width = 0.4 if reference is not None else 0.8
    if reference is not None:
        ax.bar(x - width / 2, reference, width, label=reference_label, color="#9db4d6")
    ax.bar(x + (width / 2 if reference is not None else 0), new, width, label=new_label, color="#d9822b")
    ax.set_xticks(x, [str(b) for b in bins], rotation=30 if len(bins) > 5 else 0, fontsize=7, ha="right"
                  if len(bins) > 5 else "center")
    ax.set_ylabel("share")
    ax.legend(fontsize=7, frameon=False)


# ---------------------------------------------------------------------------------------------- acting on drift


def parse_retrain_args(text: str) -> dict:
    """ReviewFlow options given as one string (`--data s3://b/new/ --epochs 3`) as metaflow.Runner keyword
    arguments; an unknown option or a missing value is an error naming it."""
    from steps import settings

    words = shlex.split(text or "")
    params, i = {}, 0
    while i < len(words):
        word = words[i]
        name = word[2:].split("=", 1)[0] if word.startswith("--") else ""
        setting = settings.BY_NAME.get(name)
        if setting is None:
            raise ReviewflowError(f"--retrain-args: {word!r} is not a ReviewFlow option; see "
                                  "`python flows/review_flow.py run --help`")
        if setting.is_flag and "=" not in word:
            params[setting.attr] = True
            i += 1
            continue
        if "=" in word:
            value = word.split("=", 1)[1]
        elif i + 1 < len(words):
            i += 1
            value = words[i]
        else:
            raise ReviewflowError(f"--retrain-args: {word} needs a value")
        try:
            params[setting.attr] = (value.strip().lower() in ("1", "true", "yes", "on") if setting.is_flag
                                    else setting.type(value))
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(setting.type, setting.type.__name__)
            raise ReviewflowError(f"--retrain-args: {word} {value!r}: expected {kind}") from None
        i += 1
    return params


def retrain_command(retrain_args: str) -> str:
    return " ".join(["python flows/review_flow.py run", *([shlex.join(shlex.split(retrain_args))]
                                                           if retrain_args.strip() else [])])


def event_payload(report: MonitorReport, location: str, monitor_run: str) -> dict:
    """What the retraining event carries. Its keys match no ReviewFlow parameter (an Argo trigger sets parameters
    from payload fields of the same name), so the triggered run uses its deployed settings."""
    return {"monitor_run": monitor_run, "monitor_log": location, "monitor_drifted": ",".join(report.drifted),
            "monitor_champion_version": str(report.champion_version), "monitor_records": str(report.records)}
