"""The registered model, as an MLflow "model from code": review texts in, labels (and probabilities) out.

MLflow copies this file into every logged model and runs it when the model is loaded; it must stay
self-contained (no imports from this project; `inference_log`, when present, travels with it as `code_paths`).

    model = mlflow.pyfunc.load_model("models:/review-classifier@champion")
    model.predict(pd.DataFrame({"reviewText": [...]}))                                   # labels, 1 = positive
    model.predict(pd.DataFrame({"reviewText": [...]}), params={"output": "probabilities"})
    #   a DataFrame: label, probability_positive (softmax of the positive class)

Labels alone by default, like MLflow's scikit-learn models, so `mlflow.models.evaluate(..., model_type=
"classifier")` works on it as it is. Over HTTP (`mlflow models serve`): `{"dataframe_records": [...]}` gives
labels, `{"dataframe_records": [...], "params": {"output": "probabilities"}}` both columns.

Backends (model config `backend`, chosen when the model was logged; `mlflow.pyfunc.load_model(uri,
model_config={"backend": ...})` or, for `mlflow models serve`, REVIEWFLOW_SERVING_BACKEND overrides it):
`torch` (the save_pretrained `classifier` artifact; on a GPU in the model config's `cuda_precision`), `onnx`
(the fp32 ONNX graph fused into onnxruntime's transformer kernels) and `onnx-int8` (its copy with int8 weights per
output channel). Every backend tokenizes with the same tokenizer, truncates at `max_length`, scores a request's
texts in buckets of similar length (at most `batch_size` each, `buckets`) and returns the softmax of the positive
class, in the caller's order.

Set REVIEWFLOW_INFERENCE_LOG (a directory or an s3:// prefix) to record every request for monitoring.
"""
import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_ARTIFACTS = {"onnx": "onnx_fp32", "onnx-int8": "onnx_int8"}
OUTPUTS = ("label", "probabilities")


# A bucket of texts of similar length ends where padding would exceed this share of its real tokens.
MAX_PADDING = 0.25
# Texts tokenized and bucketed together, at most: bounds the memory of scoring a large request (the evaluate step's
# 200,000 test rows at a million reviews) and still sorts enough texts that buckets barely pad.
CHUNK_TEXTS = 8192


def buckets(lengths, batch_size: int) -> list:
    """Row indices in batches of at most `batch_size`: the rows sorted by token length (ties in input order), and
    a new batch begun wherever padding the next row's batch to its longest row would add more than `MAX_PADDING`
    of its real tokens. One row a batch for a single text; for many, each batch costs about its real tokens."""
    import numpy as np

    order = np.argsort(np.asarray(lengths), kind="stable")
    out, start, tokens = [], 0, 0
    for end, row in enumerate(order):
        length = int(lengths[row])
        rows = end - start + 1
        if rows > 1 and (rows > batch_size or rows * length > (1 + MAX_PADDING) * (tokens + length)):
            out.append(order[start:end])
            start, tokens = end, 0
        tokens += length
    if start < len(order):
        out.append(order[start:])
    return out


class Scorer:
    """Positive-class probabilities of review texts with one backend (also used to check the backends' parity)."""

    def __init__(self, classifier_dir: str, backend: str = "torch", onnx_file: str | None = None,
                 max_length: int = 128, batch_size: int = 64, cuda_precision: str = "fp32", *, model=None,
                 tokenizer=None):
        """`model` / `tokenizer`: already loaded from `classifier_dir` (the evaluate step's), so not loaded again."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
        self.backend, self.max_length, self.batch_size = backend, int(max_length), int(batch_size)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        if backend == "torch":
            import torch

            if model is None:
                from transformers import AutoModelForSequenceClassification

                self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
                model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).to(self.device)
            else:
                self.device = next(model.parameters()).device
            self.model = model.eval()
            dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
            self.autocast = dtypes.get(cuda_precision) if self.device.type == "cuda" else None
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            _size_threads(options)
            self.session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])

    def probabilities(self, texts: list[str]):
        """The positive class's probability of each text, in the caller's order. The texts are tokenized once,
        sorted by length and scored in buckets of similar length (`buckets`), so a request of many reviews is not
        padded to its longest one; a request of more than `CHUNK_TEXTS` texts, a chunk of them at a time, so the
        tokenizer's output stays small (200,000 texts at once held 2.2 GB)."""
        import numpy as np

        texts = texts if isinstance(texts, list) else list(texts)
        probs = np.zeros(len(texts), dtype=np.float64)
        for start in range(0, len(texts), CHUNK_TEXTS):
            chunk = texts[start:start + CHUNK_TEXTS]
            ids = self.tokenizer(chunk, truncation=True, max_length=self.max_length, padding=False,
                                 return_token_type_ids=False, return_attention_mask=False)["input_ids"]
            lengths = np.fromiter((len(row) for row in ids), dtype=np.int64, count=len(ids))
            for rows in buckets(lengths, self.batch_size):
                probs[start + rows] = self._positive(self._padded([ids[i] for i in rows], int(lengths[rows].max())))
        return probs

    def _padded(self, rows: list[list[int]], width: int) -> dict:
        import numpy as np

        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if self.pad_left else slice(0, len(row))
            input_ids[i, span], mask[i, span] = row, 1
        if self.backend == "torch":
            import torch

            return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}
        return {"input_ids": input_ids, "attention_mask": mask}

    def _positive(self, batch):
        import numpy as np

        if self.backend == "torch":
            import torch

            with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast,
                                                        enabled=self.autocast is not None):
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()
            return torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        logits = self.session.run(None, batch)[0]
        logits = logits.astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted[:, 1] / shifted.sum(axis=-1)


class ReviewClassifier(PythonModel):
    def load_context(self, context):
        import os

        config = context.model_config or {}
        backend = os.environ.get("REVIEWFLOW_SERVING_BACKEND") or str(config.get("backend", "torch"))
        onnx = context.artifacts.get(ONNX_ARTIFACTS.get(backend, ""))
        if backend in ONNX_ARTIFACTS and not onnx:
            raise ValueError(f"backend {backend!r}: this model was logged without its ONNX variants; serve it with "
                             "backend 'torch' (REVIEWFLOW_SERVING_BACKEND=torch)")
        self.text_column = str(config["text_column"])
        self.model_name, self.model_version = _identity(config, context.artifacts["classifier"])
        self.classifier_dir = context.artifacts["classifier"]
        self.scorer = Scorer(context.artifacts["classifier"], backend, onnx, config.get("max_length", 128),
                             config.get("batch_size", 64), str(config.get("cuda_precision", "fp32")))
        self.log = _inference_log() if config.get("inference_log", True) else None  # False: the caller logs

    def torch_classifier(self):
        """(torch model, tokenizer, max_length) whatever the serving backend: token attributions need gradients."""
        if self.scorer.backend == "torch":
            return self.scorer.model, self.scorer.tokenizer, self.scorer.max_length
        if getattr(self, "_torch", None) is None:
            from transformers import AutoModelForSequenceClassification

            self._torch = AutoModelForSequenceClassification.from_pretrained(self.classifier_dir).eval()
        return self._torch, self.scorer.tokenizer, self.scorer.max_length

    def predict(self, context, model_input, params=None):
        import numpy as np

        output = (params or {}).get("output", "label")
        if output not in OUTPUTS:
            raise ValueError(f"params output={output!r}: use one of {', '.join(OUTPUTS)}")
        if isinstance(model_input, pd.DataFrame):
            if self.text_column not in model_input.columns:
                raise ValueError(f"input needs a '{self.text_column}' column, got {list(model_input.columns)}")
            texts = model_input[self.text_column].fillna("").astype(str).tolist()
        else:
            texts = [str(t) for t in model_input]
        probs = self.scorer.probabilities(texts)
        labels = (probs >= 0.5).astype("int64")
        if self.log is not None:
            self.log.record(texts, labels, probs, self.model_name, self.model_version)
        if output == "probabilities":
            return pd.DataFrame({"label": labels, "probability_positive": probs})
        return pd.Series(np.asarray(labels), name="label")


def _size_threads(options) -> None:
    """onnxruntime's threads as the process's environment says: OMP_NUM_THREADS (a reviewflow step sets it to its
    share of the cores, steps/runtime/threads.py; a user may set it for a server), and no spinning where
    REVIEWFLOW_SHARED_CORES=1 (other tasks compute beside this one). Neither set: onnxruntime's defaults."""
    import os

    threads = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if os.environ.get("REVIEWFLOW_SHARED_CORES") == "1":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")


def _identity(config, classifier_dir):
    """(name, version) recorded in the inference log: REVIEWFLOW_MODEL_NAME / REVIEWFLOW_MODEL_VERSION or the
    model_config's, else the LoggedModel id from this model's MLmodel file (one id per trained model)."""
    import os
    from pathlib import Path

    name = os.environ.get("REVIEWFLOW_MODEL_NAME") or str(config.get("model_name", ""))
    version = os.environ.get("REVIEWFLOW_MODEL_VERSION") or str(config.get("model_version", ""))
    if not version:
        mlmodel = Path(classifier_dir).resolve().parents[1] / "MLmodel"
        try:
            for line in mlmodel.read_text(encoding="utf-8").splitlines():
                if line.startswith("model_id:"):
                    version = line.split(":", 1)[1].strip().strip("'\"")
        except OSError:
            pass
    return name, version


def _inference_log():
    """The inference log of REVIEWFLOW_INFERENCE_LOG, when set and shipped with the model; else None."""
    try:
        from inference_log import InferenceLog
    except ImportError:
        return None
    return InferenceLog.from_env()


mlflow.models.set_model(ReviewClassifier())
