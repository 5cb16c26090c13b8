"""Drift: a compact profile of the data a model was trained on, and how far new data has moved from it.

Every registered version stores a profile (JSON, about 6 KB) of its TRAINING split:
- label: share of negative / positive rows;
- text_chars: review length in characters, binned at the training deciles;
- token_length: tokens per review under the model's tokenizer (truncated at max_length), binned the same way;
- charset: share of reviews that are pure ASCII / other Latin script / contain letters of another script
  (a script share, not language identification);
- vocabulary: share of tokens seen in the training split / unseen there / the tokenizer's unknown token.
  Its reference is the validation split measured against the training vocabulary (a bitmap of token ids
  kept in the profile), i.e. the out-of-vocabulary rate of fresh data from the same distribution.

Every feature is a distribution over a few bins, so one measure fits them all: the population stability
index PSI = sum((new - reference) * ln(new / reference)). Rule of thumb used here: below 0.1 stable,
0.1 to 0.25 a moderate shift, 0.25 or more drift.
"""
from __future__ import annotations

import base64
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps.runtime.errors import ReviewflowError

PROFILE_VERSION = 1
PROFILE_ARTIFACT = "data_profile/training_profile.json"
PROFILE_TAG = "training_profile"  # model-version tag: runs:/<run id>/<PROFILE_ARTIFACT>
PSI_MODERATE = 0.1
PSI_DRIFT = 0.25
PSI_FLOOR = 1e-4  # a bin share of 0 counts as this, so PSI stays finite
TOKEN_SAMPLE_ROWS = 20_000  # new rows tokenized for the token features (seeded sample)
DECILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
CHARSET = ("ascii", "latin", "other_script")
VOCABULARY = ("seen_in_training", "unseen_in_training", "unknown_token")


# ---------------------------------------------------------------------------------------------- features


def _arrow_texts(texts):
    import pyarrow as pa

    return pa.array(texts.astype("string"))


def text_lengths(texts):
    """Characters per text (numpy int array)."""
    import pyarrow.compute as pc

    return pc.utf8_length(_arrow_texts(texts)).fill_null(0).to_numpy(zero_copy_only=False)


def charset_shares(texts) -> dict[str, float]:
    """Share of texts that are pure ASCII, other Latin script, or contain a letter of another script."""
    import numpy as np
    import pyarrow.compute as pc

    array = _arrow_texts(texts)
    if not len(array):
        return {name: 0.0 for name in CHARSET}
    ascii_ = pc.string_is_ascii(array).fill_null(True).to_numpy(zero_copy_only=False)
    other = pc.match_substring_regex(array, r"[^\p{Latin}\P{L}]").fill_null(False).to_numpy(zero_copy_only=False)
    other &= ~ascii_
    n = len(array)
    return {"ascii": float(np.sum(ascii_)) / n, "latin": float(np.sum(~ascii_ & ~other)) / n,
            "other_script": float(np.sum(other)) / n}


def label_shares(labels) -> dict[str, float]:
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64)
    positive = float(labels.mean()) if len(labels) else 0.0
    return {"0": 1 - positive, "1": positive}


def _content_ids(ids, tokenizer):
    """Token ids without the special tokens ([CLS], [SEP], [PAD], ...) except the unknown token."""
    import numpy as np

    specials = [i for i in tokenizer.all_special_ids if i != tokenizer.unk_token_id]
    ids = np.asarray(ids)
    return ids[~np.isin(ids, specials)]


def vocabulary_shares(ids, seen_bitmap, unk_id: int | None) -> dict[str, float]:
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    if not len(ids):
        return {name: 0.0 for name in VOCABULARY}
    unknown = ids == unk_id if unk_id is not None else np.zeros(len(ids), dtype=bool)
    inside = ids < len(seen_bitmap)
    seen = np.zeros(len(ids), dtype=bool)
    seen[inside] = seen_bitmap[ids[inside]]
    seen &= ~unknown
    n = len(ids)
    return {"seen_in_training": float(seen.sum()) / n,
            "unseen_in_training": float((~seen & ~unknown).sum()) / n,
            "unknown_token": float(unknown.sum()) / n}


def numeric_profile(values) -> dict:
    """Decile bin edges of `values` and the share of values per bin, plus a few quantiles for people."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    edges = sorted(set(float(v) for v in np.quantile(values, DECILES))) if len(values) else []
    return {
        "edges": edges,
        "shares": binned_shares(values, edges),
        "quantiles": {f"p{int(q * 100):02d}": float(np.quantile(values, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
        if len(values) else {},
        "mean": float(values.mean()) if len(values) else 0.0,
    }


def binned_shares(values, edges: list[float]) -> list[float]:
    """Share of values per bin: (-inf, e1], (e1, e2], ..., (ek, inf)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="left"), minlength=len(edges) + 1)
    return (counts / max(len(values), 1)).tolist()


def psi(reference: list[float], new: list[float]) -> float:
    """Population stability index of two distributions over the same bins."""
    total = 0.0
    for r, n in zip(reference, new):
        r, n = max(r, PSI_FLOOR), max(n, PSI_FLOOR)
        total += (n - r) * math.log(n / r)
    return total


def level(value: float) -> str:
    return "drift" if value >= PSI_DRIFT else "moderate" if value >= PSI_MODERATE else "stable"


# ---------------------------------------------------------------------------------------------- profile


def training_profile(train_frame, train_tokens, validation_tokens, tokenizer, tokenizer_name: str,
                     max_length: int) -> dict:
    """The compact profile of a training split (and its validation split, as the vocabulary reference)."""
    import numpy as np

    content = _content_ids(train_tokens.ids, tokenizer)
    vocab_size = max(len(tokenizer), int(content.max()) + 1 if len(content) else 0)
    seen = np.zeros(vocab_size, dtype=bool)
    seen[content[content != tokenizer.unk_token_id]] = True
    reference_ids = _content_ids(validation_tokens.ids, tokenizer) if validation_tokens is not None else content
    texts = train_frame[TEXT_COLUMN]
    return {
        "profile_version": PROFILE_VERSION,
        "rows": int(len(train_frame)),
        "tokenizer": tokenizer_name,
        "max_length": int(max_length),
        "vocab_size": int(vocab_size),
        "features": {
            "label": {"kind": "categorical", "shares": label_shares(train_frame[LABEL_COLUMN])},
            "text_chars": {"kind": "numeric", **numeric_profile(text_lengths(texts))},
            "token_length": {"kind": "numeric", **numeric_profile(train_tokens.lengths)},
            "charset": {"kind": "categorical", "shares": charset_shares(texts)},
            "vocabulary": {"kind": "categorical", "reference": "validation split vs training vocabulary",
                           "shares": vocabulary_shares(reference_ids, seen, tokenizer.unk_token_id)},
        },
        "training_token_ids": base64.b64encode(np.packbits(seen).tobytes()).decode("ascii"),
    }


def _seen_bitmap(profile: dict):
    import numpy as np

    packed = np.frombuffer(base64.b64decode(profile["training_token_ids"]), dtype=np.uint8)
    return np.unpackbits(packed)[: profile["vocab_size"]].astype(bool)


def profile_features(profile: dict, frame, tokenizer=None, seed: int = 0) -> tuple[dict, list[str]]:
    """The same features for new rows, binned like `profile`; token features only with a tokenizer, the label
    feature only when `frame` has labels (an inference log has predictions instead)."""
    import numpy as np

    from steps.data.tokens import encode

    reference = profile["features"]
    texts = frame[TEXT_COLUMN]
    lengths = text_lengths(texts)
    features = {
        "text_chars": {**numeric_profile(lengths), "shares": binned_shares(lengths, reference["text_chars"]["edges"])},
        "charset": {"shares": charset_shares(texts)},
    }
    if LABEL_COLUMN in frame.columns:
        features["label"] = {"shares": label_shares(frame[LABEL_COLUMN])}
    notes = []
    if tokenizer is None:
        notes.append(f"token features skipped: tokenizer {profile['tokenizer']!r} could not be loaded here")
        return features, notes
    sample = frame.sample(n=TOKEN_SAMPLE_ROWS, random_state=seed) if len(frame) > TOKEN_SAMPLE_ROWS else frame
    if len(sample) < len(frame):
        notes.append(f"token features from a seeded sample of {len(sample)} of {len(frame)} rows")
    labels = sample[LABEL_COLUMN].to_numpy() if LABEL_COLUMN in sample.columns else np.zeros(len(sample), np.int64)
    tokens = encode(sample[TEXT_COLUMN].tolist(), labels, tokenizer, profile["max_length"])
    features["token_length"] = {**numeric_profile(tokens.lengths),
                                "shares": binned_shares(tokens.lengths, reference["token_length"]["edges"])}
    features["vocabulary"] = {"shares": vocabulary_shares(_content_ids(tokens.ids, tokenizer), _seen_bitmap(profile),
                                                          tokenizer.unk_token_id)}
    return features, notes


def _aligned(reference, new) -> tuple[list[float], list[float]]:
    """Bin shares of both sides in the same order (lists are already bins; dicts are matched by key)."""
    if isinstance(reference, dict):
        return list(reference.values()), [new.get(key, 0.0) for key in reference]
    return list(reference), list(new)


def bin_labels(feature: dict) -> list[str]:
    """Names of a profile feature's bins, in order: its categories, or value ranges such as `<=12`, `13-20`, `>95`."""
    if isinstance(feature["shares"], dict):
        return list(feature["shares"])
    edges = feature.get("edges", [])
    if not edges:
        return ["all"]

    def number(v: float) -> str:
        return f"{v:g}"

    labels = [f"<={number(edges[0])}"]
    labels += [f"{number(low)}-{number(high)}" for low, high in zip(edges, edges[1:])]
    return labels + [f">{number(edges[-1])}"]


def _summary(feature: dict) -> str:
    if "quantiles" in feature and feature["quantiles"]:
        q = feature["quantiles"]
        return f"median {q['p50']:.0f}, p95 {q['p95']:.0f}"
    return ", ".join(f"{k} {v:.3f}" for k, v in feature["shares"].items())


# ---------------------------------------------------------------------------------------------- comparison


@dataclass
class DriftReport:
    status: str  # no_champion | no_profile | stable | moderate | drift
    champion_version: int | None = None
    features: list[dict] = field(default_factory=list)  # name, psi, level, reference, new
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[dict]:
        return [f for f in self.features if f["level"] == "drift"]

    def metrics(self) -> dict:
        metrics = {f"drift_psi_{f['name']}": round(f["psi"], 6) for f in self.features}
        if self.features:
            metrics["drift_psi_max"] = round(max(f["psi"] for f in self.features), 6)
            metrics["drift_features_drifted"] = len(self.drifted)
        return metrics

    def describe(self) -> str:
        if self.status in ("no_champion", "no_profile"):
            return "Drift check skipped: " + "; ".join(self.notes)
        warning = "WARNING: " if self.drifted else ""
        lines = [f"{warning}Drift against the champion (version {self.champion_version}): {self.status} "
                 f"(PSI >= {PSI_DRIFT} = drift, >= {PSI_MODERATE} = moderate)"]
        for f in self.features:
            lines.append(f"  {f['name']}: PSI {f['psi']:.3f} ({f['level']}); training {f['reference']}; new {f['new']}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"status": self.status, "champion_version": self.champion_version, "features": self.features,
                "notes": self.notes, "psi_moderate": PSI_MODERATE, "psi_drift": PSI_DRIFT}


def compare_to_profile(profile: dict, frame, tokenizer=None, champion_version: int | None = None,
                       seed: int = 0) -> DriftReport:
    """PSI per feature between the profile's training data and the new rows in `frame`."""
    new, notes = profile_features(profile, frame, tokenizer, seed)
    features = []
    for name, reference in profile["features"].items():
        if name not in new:
            continue
        training_shares, new_shares = _aligned(reference["shares"], new[name]["shares"])
        value = psi(training_shares, new_shares)
        features.append({"name": name, "psi": round(value, 6), "level": level(value),
                         "reference": _summary(reference), "new": _summary(new[name]),
                         "bins": bin_labels(reference), "training_shares": [round(v, 6) for v in training_shares],
                         "new_shares": [round(v, 6) for v in new_shares]})
    worst = max((f["psi"] for f in features), default=0.0)
    return DriftReport(status=level(worst), champion_version=champion_version, features=features, notes=notes)


def champion_profile(mlflow_client, registered_model: str) -> tuple[int | None, dict | None, str]:
    """(champion version, its training profile, why not) for `registered_model`; None where there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow_client.get_model_version_by_alias(registered_model, "champion")
    except MlflowException:
        return None, None, f"'{registered_model}' has no champion yet; nothing to compare with"
    uri = (version.tags or {}).get(PROFILE_TAG)
    if not uri:
        return int(version.version), None, (f"champion version {version.version} has no '{PROFILE_TAG}' tag "
                                            "(registered outside reviewflow)")
    run_id, _, path = uri.removeprefix("runs:/").partition("/")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow_client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError) as err:
            return int(version.version), None, f"champion version {version.version}: cannot read {uri}: {err}"
        return int(version.version), json.loads(Path(local).read_text()), ""


def check_drift(mlflow_client, registered_model: str, frame, load_tokenizer=None, seed: int = 0) -> DriftReport:
    """Compare `frame` with the training profile of the current champion of `registered_model`."""
    version, profile, why_not = champion_profile(mlflow_client, registered_model)
    if profile is None:
        return DriftReport(status="no_champion" if version is None else "no_profile", champion_version=version,
                           notes=[why_not])
    return compare_with_tokenizer(profile, frame, load_tokenizer, version, seed)


def compare_with_tokenizer(profile: dict, frame, load_tokenizer=None, version: int | None = None,
                           seed: int = 0) -> DriftReport:
    """`compare_to_profile` with the profile's own tokenizer, loaded by `load_tokenizer(name)` (token features are
    skipped, with a note, when it cannot be loaded or no longer matches the profile)."""
    tokenizer, notes = None, []
    if load_tokenizer is not None:
        try:
            tokenizer = load_tokenizer(profile["tokenizer"])
        except (ReviewflowError, OSError, ValueError) as err:
            notes.append(f"cannot load tokenizer {profile['tokenizer']!r}: {str(err).splitlines()[0]}")
        if tokenizer is not None and len(tokenizer) > profile["vocab_size"]:
            notes.append(f"tokenizer {profile['tokenizer']!r} now has {len(tokenizer)} tokens, the profile "
                         f"{profile['vocab_size']}; token features skipped")
            tokenizer = None
    report = compare_to_profile(profile, frame, tokenizer, version, seed)
    report.notes = notes + report.notes
    return report


def log_drift(run, report: DriftReport) -> None:
    run.metrics(report.metrics())
    run.tags({"drift_status": report.status})
    run.json(report.as_dict(), "validation/drift.json")


def require_no_drift(report: DriftReport, fail_on_drift: bool) -> None:
    """Under --fail-on-drift, stop the flow when any feature drifted (PSI >= PSI_DRIFT)."""
    if fail_on_drift and report.drifted:
        lines = [f"data drift against the champion (version {report.champion_version}) in "
                 f"{len(report.drifted)} feature(s), PSI >= {PSI_DRIFT}:"]
        lines += [f"  - {f['name']}: PSI {f['psi']:.3f}; training data {f['reference']}; new data {f['new']}"
                  for f in report.drifted]
        lines.append("Nothing was trained or registered (--fail-on-drift). Check where the new data comes from, "
                     "or run without --fail-on-drift to train on it anyway.")
        raise ReviewflowError("\n".join(lines))


def store_training_profile(run, registered_model: str, version: int, profile: dict) -> str:
    """Log the profile into the register step's MLflow run and point the model version's tag at it."""
    run.json(profile, PROFILE_ARTIFACT)
    uri = f"runs:/{run.run_id}/{PROFILE_ARTIFACT}"
    run.client.set_model_version_tag(registered_model, str(version), PROFILE_TAG, uri)
    return uri
