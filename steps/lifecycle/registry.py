"""Registry: register the logged model that evaluation scored (steps/serving/package.py), idempotently, with aliases.

Every registered version carries the Metaflow run that made it (`metaflow_run`), the Metaflow task that trained
the model (`trained_by`: the idempotency key, the same in a retried or resumed run) and the fingerprint of the
data it was trained on (`data_fingerprint`), gets the alias `challenger`, and is tagged with the promotion
gate's verdict (`gate=passed|failed`, `gate.reasons`, the gate's inputs). With `promote_mode="auto"` a version
that passed the gate becomes `champion` through steps.lifecycle.promotion (locked, verified, audited).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from steps.lifecycle.promotion import ChampionChanged, promote
from steps.runtime import faults
from steps.runtime.tracking import CHALLENGER, CHAMPION, alias_version


@dataclass
class Registration:
    name: str
    version: int
    model_uri: str
    created: bool  # False when an earlier attempt of the same flow run had already registered it
    aliases: list[str] = field(default_factory=list)
    gate: str = ""  # passed | failed
    gate_reasons: list[str] = field(default_factory=list)
    promoted: bool = False  # this registration moved `champion` (False on a retry that finds it done)


def find_version(mlflow_client, name: str, trained_by: str):
    """The version an earlier attempt (a @retry, or the run a `resume` continues) registered for this model."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and tags.{TRAINED_BY} = '{trained_by}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


TRAINED_BY = "trained_by"


def _tag_verdict(mlflow_client, name: str, version: int, verdict, promote_mode: str) -> None:
    for key, value in {**verdict.tags(), "gate.promote": promote_mode}.items():
        mlflow_client.set_model_version_tag(name, str(version), key, value)


def register(mlflow_client, name: str, model_uri: str, metaflow_run: str, tags: dict, verdict,
             promote_mode: str = "auto", trained_by: str | None = None) -> Registration:
    """Register the logged model `model_uri` (the one evaluation scored) under `name` once per trained model, tag
    it with the gate's verdict, set aliases.

    `trained_by` (default: `metaflow_run`) names the trained model, e.g. the pathspec of the Metaflow task that
    trained it: a version tagged with it already exists when an earlier attempt crashed after registering, and
    is then reused, never duplicated; the aliases, verdict tags and promotion are completed as needed.

    `verdict` (steps.evaluation.gate.GateVerdict) was decided against the champion current at evaluation time. With
    `promote_mode="auto"` a passed version becomes champion; if the champion moved since evaluation the
    version stays challenger and the gate is recorded as failed for that reason. "never" only registers.
    """
    import mlflow

    from steps.evaluation.gate import check_promote_mode

    check_promote_mode(promote_mode)
    trained_by = trained_by or metaflow_run
    existing = find_version(mlflow_client, name, trained_by)
    if existing is not None:
        version, model_uri, created = int(existing.version), existing.source, False
        print(f"'{name}' v{version} already holds this model ({TRAINED_BY}={trained_by}, registered by "
              f"{existing.tags.get('metaflow_run', '?')}): reusing it, not registering it again", flush=True)
    else:
        all_tags = {"metaflow_run": metaflow_run, TRAINED_BY: trained_by, **{k: str(v) for k, v in tags.items()}}
        registered = mlflow.register_model(model_uri, name, tags=all_tags)
        version, created = int(registered.version), True
    faults.inject("register/after_version")  # test hook: a crash between registering and setting the aliases
    mlflow_client.set_registered_model_alias(name, CHALLENGER, str(version))
    _tag_verdict(mlflow_client, name, version, verdict, promote_mode)  # before promoting: a champion is never untagged
    promoted = False
    if promote_mode == "auto" and verdict.passed:
        try:
            move = promote(mlflow_client, name, version, verdict=verdict, action="auto", metaflow_run=metaflow_run,
                           reason="passed the gate at registration: " + "; ".join(verdict.reasons))
            promoted = move.changed
        except ChampionChanged as err:
            verdict = replace(verdict, passed=False, reasons=[*verdict.reasons, f"not promoted: {err}"])
            _tag_verdict(mlflow_client, name, version, verdict, promote_mode)
    aliases = [CHALLENGER] + ([CHAMPION] if alias_version(mlflow_client, name, CHAMPION) == version else [])
    return Registration(name=name, version=version, model_uri=model_uri, created=created, aliases=aliases,
                        gate=verdict.tags()["gate"], gate_reasons=list(verdict.reasons), promoted=promoted)


def register_trained_model(run, name: str, model_uri: str, *, metaflow_run: str, trained_by: str, serving_tags: dict,
                           data_fingerprint: str, base_model: str, training_inputs: dict, test_metrics: dict,
                           verdict: dict, promote_mode: str, training_profile: dict) -> Registration:
    """The register step: register the logged model that evaluation scored, with its lineage, test metrics and
    serving figures as tags, move the aliases, and store the training data's drift profile beside the version."""
    from steps.data.drift import store_training_profile
    from steps.evaluation.gate import GateVerdict
    from steps.lifecycle.retrain import version_tags

    tags = {"data_fingerprint": data_fingerprint, "base_model": base_model, **version_tags(training_inputs),
            **{f"test_{k}": test_metrics[k] for k in ("accuracy", "f1", "roc_auc")}, **serving_tags}
    registration = register(run.client, name, model_uri, metaflow_run=metaflow_run, trained_by=trained_by,
                            tags=tags, verdict=GateVerdict(**verdict), promote_mode=promote_mode)
    run.tags({"registered_model": registration.name, "registered_version": registration.version,
              "gate": registration.gate})
    store_training_profile(run, registration.name, registration.version, training_profile)
    return registration
