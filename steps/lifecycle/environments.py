"""Environments follow Metaflow's @project branches: only production runs own the production model's aliases.

    branch            registered model                          who runs it
    prod              <registered-model>  (review-classifier)   the deployed schedule (`--production`)
    user.alice        review-classifier.user.alice              alice's own runs (the default branch)
    test.nightly      review-classifier.test.nightly            a `--branch nightly` deployment
    prod.staging      review-classifier.prod.staging            a `--production --branch staging` deployment

A run registers, compares with the champion, checks drift and skip-if-unchanged against its own branch's model,
so nothing a person or a test deployment runs can move the production `champion`. Moving a branch's version into
production is PromoteFlow's job (`--production run --source models:/<branch model>/<version>`): a copy of the
version, gated against the production champion on its own test rows, audited like any move.
"""
from __future__ import annotations

PRODUCTION_BRANCH = "prod"


def registered_model_name(base: str, branch: str | None) -> str:
    """The registered model a run of `branch` owns: `base` on the production branch, `base.<branch>` elsewhere;
    `base` too when there is no @project branch at all (a flow without one)."""
    if not branch or branch == PRODUCTION_BRANCH:
        return base
    return f"{base}.{branch}"


def describe(base: str, branch: str | None) -> str:
    name = registered_model_name(base, branch)
    if name == base:
        return f"'{name}' (production)" if branch == PRODUCTION_BRANCH else f"'{name}'"
    return (f"'{name}' (branch {branch}; production's '{base}' is moved only by a --production run, or by "
            f"`promote_flow.py --production run --source models:/{name}/<version>`)")
