"""The served model: log a trained classifier as the MLflow model that is evaluated, registered and served.

One call makes everything that is served and scores the test rows once per backend: the ONNX fp32 graph fused into
onnxruntime's transformer kernels and its int8 copy (steps/serving/onnx_export.py), PyTorch's probabilities as the
reference, each backend's parity with it (`ParityRules`: fp32 ONNX within `FP32_TOLERANCE` of PyTorch's
probabilities on every row; int8 within `int8_max_drop` of its accuracy and of its F1, with at most
`int8_max_flipped` of the test predictions flipped), the serving backend (the first in a fixed order that passed,
or the one asked for), and one MLflow LoggedModel carrying the weights, the tokenizer, both ONNX graphs, the model
code, its signature, an input example and pinned requirements.

Parity is judged on the test rows, or on a fixed seeded sample of `PARITY_ROWS` of them where there are more
(a million-row table has 200,000 test rows: three backends scoring all of them would be most of the run); the
chosen backend then scores all the test rows once. The served backend's scores of the test rows are the
evaluation's: they come from the same `Scorer` class (the logged model's own code), the same files and the same
settings as the logged model's predict path, so what is served is exactly what was evaluated for the same request,
all the test rows at once
(tests/serving/test_package.py and tests/flows/test_review_flow.py load the logged model and check it, row by
row). `register` registers exactly that model.

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
INT8_MAX_DROP = 0.003  # --int8-max-drop: accuracy and F1 each at most 0.3 point below PyTorch's
INT8_MAX_FLIPPED = 0.01  # --int8-max-flipped: at most 1% of the test predictions differ from PyTorch's
BATCH_SIZE = 64
WARM_UP = 16  # texts scored before a backend is timed: first-call allocations are not its speed
PARITY_ROWS = 2_000  # test rows every backend scores for parity: all of them up to this, else a seeded sample
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
    parity: dict = field(default_factory=dict)  # backend -> {passed, max_abs_diff, flipped, accuracy, f1, ...}
    graph: dict = field(default_factory=dict)  # the fp32 ONNX graph: optimized, fused operators, note

    def tags(self) -> dict:
        """Model-version tags: the backend, why, each backend's parity figures, whether the graph is fused."""
        tags = {"serving.backend": self.backend, "serving.chosen_because": self.chose}
        if self.graph:
            tags["serving.onnx_optimized"] = str(bool(self.graph.get("optimized")))
        for backend, figures in self.parity.items():
            for key, value in figures.items():
                tags[f"parity.{backend}.{key}"] = f"{value:.6g}" if isinstance(value, float) else str(value)
        return tags

    def scorecard(self) -> str:
        """What each backend scored in its parity check (all the test rows, or the seeded sample of
        `PARITY_ROWS` of them), in one line: `accuracy/F1 on 722 test rows: torch 0.8460/0.8711, onnx ...,
        onnx-int8 0.8460/0.8726 (refused: 2.2% flipped > 1.0%)`."""
        parts = []
        for backend, f in self.parity.items():
            note = "" if f.get("passed", True) else f" (refused: {f.get('failed_because', 'parity failed')})"
            parts.append(f"{backend} {f['accuracy']:.4f}/{f['f1']:.4f}{note}")
        rows = next(iter(self.parity.values()), {}).get("rows")
        where = f"on {rows:,} test rows" if rows else "on the test rows"
        return f"accuracy/F1 {where}: " + ", ".join(parts) if parts else ""


@dataclass(frozen=True)
class ParityRules:
    """When a variant may serve in place of PyTorch fp32 (the reference)."""

    fp32_tolerance: float = FP32_TOLERANCE
    int8_max_drop: float = INT8_MAX_DROP
    int8_max_flipped: float = INT8_MAX_FLIPPED


def pip_requirements() -> list[str]:
    """Exact pins of what the served model imports (local version tags such as +cpu dropped)."""
    return [f"{package}=={metadata.version(package).split('+', 1)[0]}" for package in RUNTIME_PACKAGES]


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]),
                          outputs=Schema([ColSpec("long", "label")]),
                          params=ParamSchema([ParamSpec("output", "string", "label")]))


def score_backends(classifier_dir: str, onnx_files: dict, texts: list[str], max_length: int, *, model=None,
                   tokenizer=None) -> dict:
    """Each backend's positive-class probabilities of `texts`, scored once: {backend: (probabilities, seconds)}.
    `model`/`tokenizer`: the classifier already loaded from `classifier_dir` (PyTorch scores with it)."""
    from steps.serving.classifier_model import Scorer

    scored = {}
    for backend in BACKENDS:
        scorer = Scorer(classifier_dir, backend, onnx_files.get(backend), max_length, BATCH_SIZE,
                        model=model if backend == "torch" else None, tokenizer=tokenizer)
        scorer.probabilities(texts[:WARM_UP])
        started = time.perf_counter()
        probs = scorer.probabilities(texts)
        scored[backend] = (probs, time.perf_counter() - started)
    return scored


def parity_sample(rows: int, limit: int | None = None, seed: int = 0):
    """Positions of the test rows parity is judged on: None (all of them) up to `limit` (PARITY_ROWS), else a
    sorted sample of `limit` positions, the same for the same row count."""
    import numpy as np

    limit = limit or PARITY_ROWS
    if rows <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def judge_parity(scored: dict, labels, rules: ParityRules = ParityRules()) -> dict:
    """{backend: figures} of `score_backends`' results against PyTorch's (the first, the reference): accuracy,
    F1, texts/s, max |p - p_torch|, the share of predictions flipped, passed, and why not where not."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score

    labels = np.asarray(labels).astype(int)
    reference, _ = scored["torch"]
    ref_labels = (reference >= 0.5).astype(int)
    ref_accuracy = float(accuracy_score(labels, ref_labels)) if len(labels) else 0.0
    ref_f1 = float(f1_score(labels, ref_labels, zero_division=0)) if len(labels) else 0.0
    figures = {}
    for backend, (probs, seconds) in scored.items():
        predicted = (probs >= 0.5).astype(int)
        row = {"rows": len(probs), "accuracy": float(accuracy_score(labels, predicted)) if len(labels) else 0.0,
               "f1": float(f1_score(labels, predicted, zero_division=0)) if len(labels) else 0.0,
               "texts_per_s": round(len(probs) / seconds, 1) if seconds else 0.0,
               "max_abs_diff": float(np.abs(probs - reference).max()) if len(probs) else 0.0,
               "flipped": float(np.mean(predicted != ref_labels)) if len(probs) else 0.0}
        failures = []
        if backend == "onnx" and row["max_abs_diff"] > rules.fp32_tolerance:
            failures.append(f"max |p - p_torch| {row['max_abs_diff']:.2e} > {rules.fp32_tolerance:g}")
        if backend == "onnx-int8":
            for metric, reference_value in (("accuracy", ref_accuracy), ("F1", ref_f1)):
                drop = reference_value - row[metric.lower()]
                if drop > rules.int8_max_drop + 1e-12:
                    failures.append(f"{metric} {100 * drop:.2f} points below PyTorch's > "
                                    f"{100 * rules.int8_max_drop:g}")
            if row["flipped"] > rules.int8_max_flipped + 1e-12:
                failures.append(f"{100 * row['flipped']:.1f}% of predictions flipped > "
                                f"{100 * rules.int8_max_flipped:g}%")
        row["passed"] = not failures
        if failures:
            row["failed_because"] = "; ".join(failures)
        figures[backend] = row
    return figures


def check_parity(classifier_dir: str, onnx_files: dict, texts: list[str], labels, max_length: int,
                 rules: ParityRules = ParityRules(), **loaded) -> dict:
    """`judge_parity` of `score_backends`: each backend's figures on the test rows against PyTorch's."""
    return judge_parity(score_backends(classifier_dir, onnx_files, texts, max_length, **loaded), labels, rules)


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
                     rules: ParityRules = ParityRules(), log=print, model=None, tokenizer=None) -> ServedModel:
    """`build_served_model` without the scores: the logged model alone."""
    return build_served_model(classifier_dir, texts, labels, max_length=max_length, trained_by=trained_by,
                              backend=backend, cuda_precision=cuda_precision, variants=variants, rules=rules,
                              log=log, model=model, tokenizer=tokenizer)[0]


def build_served_model(classifier_dir: str, texts: list[str], labels, *, max_length: int, trained_by: str,
                       backend: str = "auto", cuda_precision: str = "fp32", variants: bool = True,
                       rules: ParityRules = ParityRules(), log=print, model=None,
                       tokenizer=None) -> tuple[ServedModel, object]:
    """Export, check, choose and log (into the active MLflow run) the model that will be evaluated and served.

    Returns (the logged model, the served backend's probabilities of `texts`): the scores its own predict path
    gives, computed once, here. `model`/`tokenizer`: the classifier already loaded from `classifier_dir` (on the
    CPU; moved to the GPU for scoring where there is one), so the weights are read once. `variants=False` logs
    the PyTorch model alone (no ONNX export, no parity check, no scores: None): for tests and tools that only need
    a registered model quickly."""
    import tempfile

    import mlflow
    import numpy as np
    import pandas as pd

    from steps.serving.onnx_export import export_onnx, model_shape, optimize_onnx, quantize_int8
    from steps.training.device import pick_device

    gpu = pick_device().type == "cuda"
    scores, graph = None, {}
    with tempfile.TemporaryDirectory(prefix="reviewflow-served-") as tmp:
        artifacts = {"classifier": classifier_dir}
        if variants:
            if (model is None) != (tokenizer is None):
                raise ValueError("build_served_model: pass both the loaded model and its tokenizer, or neither")
            if model is None:
                from transformers import AutoModelForSequenceClassification, AutoTokenizer

                model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
                tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
            started = time.perf_counter()
            plain = export_onnx(model, Path(tmp) / "model.plain.onnx", tokenizer)
            fp32 = Path(tmp) / "model.onnx"
            graph = optimize_onnx(plain, fp32, model_shape(classifier_dir))
            if not graph["optimized"]:
                plain.replace(fp32)
                log(f"ONNX graph not fused ({graph['note']}): the plain export serves")
            int8 = quantize_int8(fp32, Path(tmp) / "model.int8.onnx")
            give_back_memory()  # what export, optimizer and quantizer left: the explanations come on top of it
            graph["seconds"] = round(time.perf_counter() - started, 2)
            onnx_files = {"onnx": str(fp32), "onnx-int8": str(int8)}
            artifacts.update(onnx_fp32=str(fp32), onnx_int8=str(int8))
            if gpu:
                model = model.to(pick_device())  # the caller's model moves too (explanations run there as well)
            sample = parity_sample(len(texts))
            sampled = texts if sample is None else [texts[i] for i in sample]
            scored = score_backends(classifier_dir, onnx_files, sampled, max_length, model=model, tokenizer=tokenizer)
            parity = judge_parity(scored, labels if sample is None else np.asarray(labels)[sample], rules)
            chosen, why = choose_backend(parity, backend, gpu=gpu)
            scores = scored[chosen][0]
            served_precision = cuda_precision if chosen == "torch" and gpu else "fp32"
            if sample is not None or served_precision in ("bf16", "fp16"):  # all test rows, as the model serves
                from steps.serving.classifier_model import Scorer

                scores = Scorer(classifier_dir, chosen, onnx_files.get(chosen), max_length, BATCH_SIZE,
                                served_precision, model=model if chosen == "torch" else None,
                                tokenizer=tokenizer).probabilities(texts)
            if sample is not None:
                log(f"parity judged on a seeded sample of {len(sample):,} of the {len(texts):,} test rows; "
                    f"{chosen} scored all of them")
        else:
            parity, chosen, why = {}, "torch", "PyTorch only (no ONNX variants were made)"
        if graph:
            fused = ", ".join(f"{op} x{n}" for op, n in graph["fused"].items()) or "none"
            log(f"ONNX graphs in {graph['seconds']:.1f} s; fused operators: {fused}"
                + (f" ({graph['note']})" if graph.get("note") and graph.get("optimized") else ""))
        for name, figures in parity.items():
            log(f"serving backend {name}: accuracy {figures['accuracy']:.4f}, F1 {figures['f1']:.4f}, "
                f"{figures['texts_per_s']:.0f} texts/s, max |p - p_torch| {figures['max_abs_diff']:.2e}, "
                f"{100 * figures['flipped']:.1f}% flipped, parity "
                + ("passed" if figures["passed"] else f"FAILED ({figures['failed_because']})"))
        log(f"serving with {chosen}: {why}")
        served = {"backend": chosen, "chose": why, "parity": parity, "graph": graph}
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
    return ServedModel(model_uri=f"models:/{info.model_id}", model_id=info.model_id, **served), scores


def as_dict(served: ServedModel) -> dict:
    return asdict(served)


def give_back_memory() -> None:
    """Collect the cycles the ONNX tools leave behind (~270 MB after MiniLM's export, fusion and quantization) and
    hand the freed heap back to the system (glibc keeps it otherwise, ~330 MB more), so the step's later work does not
    start from their high-water mark."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): the collection above is what there is
        pass

