"""Run reviewflow's flows for real (metaflow.Runner) in an isolated folder: own datastore, own MLflow store."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ROOT / "flows"

TEST_USER = "reviewflow-tests"  # every flow the tests start runs as this Metaflow user (tests/conftest.py)
# What those runs register into: their @project branch's model (steps/lifecycle/environments.py)
BRANCH_MODEL = f"review-classifier.user.{TEST_USER}"

# Small and fast: the tiny model learns the synthetic sentiment words in a few epochs at a high rate (8e-3: at
# 3e-3 5 of 8 seeds still predicted one class after 4 epochs on 240 rows, which the gate never promotes; 0 of 8
# at 8e-3). The words make the synthetic data trivial for the TF-IDF baseline (F1 1.0), which no model can be
# above: these runs switch that gate rule off (--ignore-baseline); tests/evaluation/test_gate.py and
# test_review_flow.py check the rule.
TINY_TRAINING = {"epochs": 4, "batch_size": 16, "learning_rate": 8e-3, "max_length": 32, "ignore_baseline": True}


def cli_options(params: dict) -> list[str]:
    """Command-line options for `params` as Metaflow takes them: a True flag alone, a False flag left out."""
    out = []
    for key, value in params.items():
        option = f"--{key.replace('_', '-')}"
        if value is True:
            out.append(option)
        elif value is not False:
            out += [option, str(value)]
    return out


def flow_env(workdir: Path, **extra) -> dict:
    env = {
        "USERNAME": "reviewflow-tests",
        "METAFLOW_USER": "reviewflow-tests",
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(workdir),
        "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{workdir / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        "TQDM_DISABLE": "1",
        "PYTHONPATH": f"{ROOT}:{FLOWS}",  # the library, and flows/flowkit for flows outside flows/
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def store_client(uri: str):
    """An MlflowClient whose runs and registry are both `uri`. Give the registry explicitly: left out, it comes
    from MLFLOW_REGISTRY_URI or mlflow.set_registry_uri, whatever this process was last pointed at."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runner(flow_file: str, workdir: Path, env: dict | None = None, **top_level):
    """A metaflow.Runner for a flow in an isolated folder; top_level are options before `run` (datastore=...)."""
    from metaflow import Runner

    workdir.mkdir(parents=True, exist_ok=True)
    return Runner(str(FLOWS / flow_file), show_output=False, cwd=str(workdir),
                  env={**flow_env(workdir), **(env or {})}, **top_level)


def run_flow(flow_file: str, workdir: Path, env: dict | None = None, top_level: dict | None = None, **params):
    """Run a flow to completion; returns (metaflow Run, ExecutingRun) — the run may have failed."""
    executing = runner(flow_file, workdir, env, **(top_level or {})).run(**params)
    return executing.run, executing


def open_run(pathspec: str, workdir: Path):
    """The metaflow Run `pathspec` of a flow run in `workdir` (see runner); safe after flows ran elsewhere."""
    from metaflow import Run, metadata, namespace

    metadata(f"local@{workdir}")
    namespace(None)
    return Run(pathspec)


def split_rows(run, name: str):
    """The rows of split `name` (train, validation, test) of a finished ReviewFlow run, as its steps read them:
    positions into the one stored copy of the reviews."""
    from steps.data.validate import stored_split

    return stored_split(run.data, name)


def card_components(task, card_id: str) -> list[dict]:
    """The components of a task's Metaflow card (its data is embedded in the HTML as base64 JSON), flattened."""
    from metaflow.cards import get_cards

    cards = get_cards(task, id=card_id)
    assert len(cards) == 1, f"{task.pathspec} has {len(cards)} cards with id {card_id!r}"
    return components_in_html(cards[0].get(), f"the {card_id!r} card of {task.pathspec}")


def components_in_html(html: str, what: str = "the card") -> list[dict]:
    """The components of a Metaflow card's HTML, flattened (nested contents follow their parent)."""
    import base64
    import json
    import re

    for blob in re.findall(r'"([A-Za-z0-9+/=]{100,})"', html):
        try:
            data = json.loads(base64.b64decode(blob))
        except ValueError:
            continue
        if isinstance(data, dict) and "components" in data:
            return _flatten(data["components"])
    raise AssertionError(f"no card data found in {what}")


def _flatten(components: list[dict]) -> list[dict]:
    flat = []
    for item in components:
        flat.append(item)
        flat.extend(_flatten(item.get("contents", [])))
    return flat
