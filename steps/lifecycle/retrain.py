"""Retrain or not: skip training when the data, model and training settings equal the champion's.

Like pipeline caching in Kubeflow, on every run: a scheduled retrain on data that has not changed should
cost a validation, not a training run and a new model version. Each registered version is tagged with its
`training_signature` (a hash of its training inputs) and the readable `training_inputs`; a run whose signature
equals the champion's ends after validation.

The training inputs are the data fingerprint, the starting weights by content (steps/lifecycle/identity.py),
the version of the training code, and every setting of steps/settings.py declared as a training input (the
default for a new setting); a setting that does not change the model says so where it is declared.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

GROUPS = ("model", "training")  # where the training inputs are declared (settings.training_inputs checks each)
SIGNATURE_TAG = "training_signature"
INPUTS_TAG = "training_inputs"


def training_inputs(fingerprint: str, values: dict) -> dict:
    """What determines the trained model: the data fingerprint, the starting weights, the training settings.

    `values`: setting values by option name; only the settings declared as training inputs are kept.
    """
    from steps import settings
    from steps.lifecycle.identity import code_version, model_identity

    inputs = settings.training_inputs(values)
    if "model" in inputs:
        inputs["model"] = model_identity(str(inputs["model"]))
    return {"data_fingerprint": fingerprint, **inputs, "code": code_version()}


def training_signature(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def version_tags(inputs: dict) -> dict:
    """Tags that let a later run compare itself with this version."""
    return {SIGNATURE_TAG: training_signature(inputs), INPUTS_TAG: json.dumps(inputs, sort_keys=True, default=str)}


@dataclass
class RetrainDecision:
    retrain: bool
    reason: str
    signature: str
    champion_version: int | None = None
    differences: list[str] = field(default_factory=list)

    @property
    def route(self) -> str:
        return "train" if self.retrain else "unchanged"


def _differences(ours: dict, theirs: dict) -> list[str]:
    def short(value, key):
        text, limit = str(value), (90 if key == "model" else 16)  # two models' ids share a long prefix
        return text[:limit - 4] + "…" if len(text) > limit else text

    keys = sorted(set(ours) | set(theirs))
    return [f"{k}: {short(theirs.get(k, '(unset)'), k)} -> {short(ours.get(k, '(unset)'), k)}"
            for k in keys if str(ours.get(k)) != str(theirs.get(k))]


def should_retrain(mlflow_client, registered_model: str, inputs: dict, force: bool = False,
                   why: dict | None = None) -> RetrainDecision:
    """Train unless the champion of `registered_model` was trained on the same inputs (or `force`). `why`: a
    sentence per input name, added to the reason when that input changed (e.g. how `--model auto` chose)."""
    from steps.runtime.tracking import CHAMPION, alias_version

    ours = training_signature(inputs)
    champion = alias_version(mlflow_client, registered_model, CHAMPION)
    if champion is None:
        return RetrainDecision(True, f"'{registered_model}' has no champion yet", ours)
    version = mlflow_client.get_model_version(registered_model, str(champion))
    theirs = version.tags.get(SIGNATURE_TAG)
    try:
        their_inputs = json.loads(version.tags.get(INPUTS_TAG, "{}"))
    except ValueError:
        their_inputs = {}
    differences = _differences(inputs, their_inputs)
    if force:
        return RetrainDecision(True, "--force-retrain", ours, champion, differences)
    if theirs is None:
        return RetrainDecision(True, f"champion v{champion} carries no {SIGNATURE_TAG} to compare with", ours, champion)
    if theirs != ours:
        explained = [f"{line} ({why[line.split(':', 1)[0]]})" if line.split(":", 1)[0] in (why or {}) else line
                     for line in differences]
        return RetrainDecision(True, f"changed since champion v{champion}: " + "; ".join(explained or ["signature"]),
                               ours, champion, differences)
    run = version.tags.get("metaflow_run", "?")
    settings = [k for k in inputs if k not in ("data_fingerprint", "model", "code")]
    return RetrainDecision(
        False,
        f"unchanged: the data (fingerprint {inputs['data_fingerprint'][:12]}), the model ({inputs.get('model')}) and "
        f"the {len(settings)} training settings ({', '.join(settings)}) equal those of champion v{champion} ({run}); "
        "nothing to train. Pass --force-retrain to train anyway.",
        ours, champion)
