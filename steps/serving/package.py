"""The served model: log a trained classifier as the MLflow model that is evaluated, registered and served.

One call makes everything that is served: the ONNX fp32 and int8 variants of the classifier, their parity with
PyTorch on the test rows (fp32 ONNX within `FP32_TOLERANCE` of PyTorch's probabilities, int8 within
`INT8_TOLERANCE` of its accuracy and F1), the serving backend (the fastest that passed, or the one asked for), and
one MLflow LoggedModel carrying the weights, the tokenizer, both ONNX graphs, the model code, its signature,
an input example and pinned requirements. Evaluation then scores the test rows through that logged model's own
predict path, and `register` registers exactly it: what is served is what was evaluated.

A retried or resumed evaluate step finds the model it logged already (LoggedModel tag `trained_by`) and logs
nothing twice.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from schemas import TEXT_COLUMN

MODEL_CODE = Path(__file__).resolve().parent / "classifier_model.py"
INFERENCE_LOG_CODE = Path(__file__).resolve().parent / "inference_log.py"
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy", "onnxruntime",
                    "boto3")  # boto3: an s3:// inference log
BACKENDS = ("torch", "onnx", "onnx-int8")
FP32_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over the test rows
INT8_TOLERANCE = 0.01  # max drop of accuracy and of F1 (1 point) against PyTorch's
BATCH_SIZE = 64
# Which backend serves: the first in this order that passes parity. On a CPU the fastest first (docs/benchmarks.md,
# Serving: int8 about 2x ONNX fp32, ONNX fp32 2-3x PyTorch); with a GPU, PyTorch on it.
PREFERENCE = ("onnx-int8", "onnx", "torch")
GPU_PREFERENCE = ("torch", "onnx-int8", "onnx")
TRAINED_BY = "trained_by"
INPUT_EXAMPLE = [
    "Works great, the battery lasts all day.",
    "Stopped working after a week and support never answered.",
]


@dataclass
class ServedModel:
    model_uri: str  # models:/<model id>
    model_id: str
    backend: str  # the one the model serves with
    chose: str  # why that backend
    parity: dict = field(default_factory=dict)  # backend -> {passed, max_abs_diff, accuracy, f1, texts_per_s, ...}

    def tags(self) -> dict:
        """Model-version tags: the backend, why, and each backend's parity figures."""
        tags = {"serving.backend": self.backend, "serving.chosen_because": self.chose}
        for backend, figures in self.parity.items():
            for key, value in figures.items():
                tags[f"parity.{backend}.{key}"] = f"{value:.6g}" if isinstance(value, float) else str(value)
        return tags


def pip_requirements() -> list[str]:
    """Exact pins of what the served model imports (local version tags such as +cpu dropped)."""
    return [f"{package}=={metadata.version(package).split('+', 1)[0]}" for package in RUNTIME_PACKAGES]


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]),
                          outputs=Schema([ColSpec("long", "label")]),
                          params=ParamSchema([ParamSpec("output", "string", "label")]))


def check_parity(classifier_dir: str, onnx_files: dict, texts: list[str], labels, max_length: int) -> dict:
    """Each backend's probabilities on the test rows against PyTorch's, and its speed: {backend: figures}."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    from steps.serving.classifier_model import Scorer

    labels = np.asarray(labels).astype(int)
    figures, reference = {}, None
    for backend in BACKENDS:
        scorer = Scorer(classifier_dir, backend, onnx_files.get(backend), max_length, BATCH_SIZE)
        scorer.probabilities(texts[:BATCH_SIZE])  # warm-up: first-call allocations are not the backend's speed
        started = time.perf_counter()
        probs = scorer.probabilities(texts)
        seconds = time.perf_counter() - started
        predicted = (probs >= 0.5).astype(int)
        row = {"accuracy": float(accuracy_score(labels, predicted)),
               "f1": float(f1_score(labels, predicted, zero_division=0)),
               "texts_per_s": round(len(texts) / seconds, 1) if seconds else 0.0}
        if reference is None:
            reference = {"probs": probs, **row}
            row.update(passed=True, max_abs_diff=0.0)
        else:
            row["max_abs_diff"] = float(np.abs(probs - reference["probs"]).max()) if len(probs) else 0.0
            if backend == "onnx":
                row["passed"] = row["max_abs_diff"] <= FP32_TOLERANCE
            else:
                row["passed"] = (reference["accuracy"] - row["accuracy"] <= INT8_TOLERANCE + 1e-12
                                 and reference["f1"] - row["f1"] <= INT8_TOLERANCE + 1e-12)
        figures[backend] = row
    return figures


def choose_backend(parity: dict, asked: str = "auto", gpu: bool = False) -> tuple[str, str]:
    """(backend, why): the one asked for; else the first that passed its parity check in the order PREFERENCE
    (GPU_PREFERENCE where PyTorch runs on a GPU: the ONNX variants run on the CPU).

    A fixed order, not the fastest measured: on a busy machine the measured speeds of backends a few tens of percent
    apart swap from run to run, and the same training inputs would be served by a different backend each time.
    The measured speeds are reported beside the choice."""
    if asked != "auto":
        passed = parity.get(asked, {}).get("passed", False)
        return asked, f"--serving-backend {asked}" + ("" if passed else " (it did not pass its parity check)")
    order = GPU_PREFERENCE if gpu else PREFERENCE
    chosen = next(b for b in order if parity.get(b, {}).get("passed"))  # torch, the reference, always passes
    speeds = ", ".join(f"{b} {f['texts_per_s']:.0f}" for b, f in parity.items())
    return chosen, (f"the first of {', '.join(order)} that passed parity{' (PyTorch on the GPU)' if gpu else ''}; "
                    f"texts/s on the test rows: {speeds}")


def find_served_model(experiment_id: str, trained_by: str) -> ServedModel | None:
    """The model an earlier attempt of the evaluate step logged for this trained model, if any."""
    import mlflow

    # status is filtered here, not in the filter string: MLflow 3.17 compares `status = 'READY'` as text with an
    # integer column, which SQLite accepts and PostgreSQL refuses (InvalidTextRepresentation)
    found = [m for m in mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list",
                                                    filter_string=f"tags.{TRAINED_BY} = '{trained_by}'")
             if str(m.status).rsplit(".", 1)[-1] == "READY"]
    if not found:
        return None
    model = sorted(found, key=lambda m: m.creation_timestamp)[0]
    served = json.loads(model.tags.get("reviewflow.served", "{}"))
    return ServedModel(model_uri=f"models:/{model.model_id}", model_id=model.model_id, **served)


def log_served_model(classifier_dir: str, texts: list[str], labels, *, max_length: int, trained_by: str,
                     backend: str = "auto", cuda_precision: str = "fp32", variants: bool = True,
                     log=print) -> ServedModel:
    """Export, check, choose and log (into the active MLflow run) the model that will be evaluated and served.

    `variants=False` logs the PyTorch model alone (no ONNX export, no parity check): for tests and tools that only
    need a registered model quickly."""
    import tempfile

    import mlflow
    import pandas as pd

    from steps.serving.onnx_export import export_onnx, quantize_int8
    from steps.training.device import pick_device

    with tempfile.TemporaryDirectory(prefix="reviewflow-served-") as tmp:
        artifacts = {"classifier": classifier_dir}
        if variants:
            fp32 = export_onnx(classifier_dir, Path(tmp) / "model.onnx")
            int8 = quantize_int8(fp32, Path(tmp) / "model.int8.onnx")
            onnx_files = {"onnx": str(fp32), "onnx-int8": str(int8)}
            artifacts.update(onnx_fp32=str(fp32), onnx_int8=str(int8))
            parity = check_parity(classifier_dir, onnx_files, texts, labels, max_length)
            chosen, why = choose_backend(parity, backend, gpu=pick_device().type == "cuda")
        else:
            parity, chosen, why = {}, "torch", "PyTorch only (no ONNX variants were made)"
        for name, figures in parity.items():
            log(f"serving backend {name}: accuracy {figures['accuracy']:.4f}, F1 {figures['f1']:.4f}, "
                f"{figures['texts_per_s']:.0f} texts/s, max |p - p_torch| {figures['max_abs_diff']:.2e}, "
                f"parity {'passed' if figures['passed'] else 'FAILED'}")
        log(f"serving with {chosen}: {why}")
        served = {"backend": chosen, "chose": why, "parity": parity}
        code_paths = [str(INFERENCE_LOG_CODE)] if INFERENCE_LOG_CODE.exists() else None
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            model_config={"backend": chosen, "max_length": max_length, "batch_size": BATCH_SIZE,
                          "text_column": TEXT_COLUMN, "cuda_precision": cuda_precision,
                          "inference_log": True},
            code_paths=code_paths,
            signature=model_signature(),
            input_example=pd.DataFrame({TEXT_COLUMN: INPUT_EXAMPLE}),
            pip_requirements=pip_requirements(),
            tags={TRAINED_BY: trained_by, "reviewflow.served": json.dumps(served, sort_keys=True)},
        )
    return ServedModel(model_uri=f"models:/{info.model_id}", model_id=info.model_id, **served)


def as_dict(served: ServedModel) -> dict:
    return asdict(served)
