"""Registry: log the trained classifier as an MLflow model and register it, idempotently, with aliases.

Every registered version carries the Metaflow run that made it (`metaflow_run`) and the fingerprint of the
data it was trained on (`data_fingerprint`), and gets the alias `challenger`. The first version of a
registered model also becomes `champion`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

CHALLENGER = "challenger"
CHAMPION = "champion"
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy")
INPUT_EXAMPLE = [
    "Works great, the battery lasts all day.",
    "Stopped working after a week and support never answered.",
]


@dataclass
class Registration:
    name: str
    version: int
    model_uri: str
    created: bool  # False when an earlier attempt of the same flow run had already registered it
    aliases: list[str] = field(default_factory=list)


def pip_requirements() -> list[str]:
    """Exact pins of what the served model imports (local version tags such as +cpu dropped)."""
    pins = []
    for package in RUNTIME_PACKAGES:
        version = metadata.version(package).split("+", 1)[0]
        pins.append(f"{package}=={version}")
    return pins


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "reviewText")]),
        outputs=Schema([ColSpec("long", "label"), ColSpec("double", "probability_positive")]),
    )


def find_version(mlflow_client, name: str, metaflow_run: str):
    """The version an earlier attempt of this flow run registered, if any."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and tags.metaflow_run = '{metaflow_run}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def alias_version(mlflow_client, name: str, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


MODEL_CODE = Path(__file__).resolve().parent / "classifier_model.py"


def log_classifier(model_dir: str, max_length: int):
    """Log the classifier as a pyfunc model (from code) in the active MLflow run; returns the ModelInfo."""
    import mlflow
    import pandas as pd

    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={"classifier": model_dir},
        model_config={"max_length": max_length, "batch_size": 64},
        signature=signature(),
        input_example=pd.DataFrame({"reviewText": INPUT_EXAMPLE}),
        pip_requirements=pip_requirements(),
    )


def register(mlflow_client, name: str, model_dir: str, max_length: int, metaflow_run: str,
             tags: dict) -> Registration:
    """Register the classifier under `name` once per flow run, tag it, and set its aliases."""
    import mlflow

    existing = find_version(mlflow_client, name, metaflow_run)
    if existing is not None:
        version, model_uri, created = int(existing.version), existing.source, False
    else:
        info = log_classifier(model_dir, max_length)
        all_tags = {"metaflow_run": metaflow_run, **{k: str(v) for k, v in tags.items()}}
        registered = mlflow.register_model(info.model_uri, name, tags=all_tags)
        version, model_uri, created = int(registered.version), info.model_uri, True
    mlflow_client.set_registered_model_alias(name, CHALLENGER, str(version))
    aliases = [CHALLENGER]
    if alias_version(mlflow_client, name, CHAMPION) in (None, version):
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
        aliases.append(CHAMPION)
    return Registration(name=name, version=version, model_uri=model_uri, created=created, aliases=aliases)
