"""Which model should I use? The work of CompareFlow (flows/compare_flow.py): candidates, one training and scoring
job per candidate and fold, the speed measurements, the table, the plot, and the ReviewFlow command to train the
chosen one.

A candidate is any `--model` value ReviewFlow accepts (packaged alias, Hub id, save_pretrained directory) or
`tfidf` (the baseline of steps/evaluation/baseline.py), optionally with its own training settings in brackets:
`minilm[epochs=3,learning-rate=1e-4]` (any setting of the `training` group, and `max-length`). Every candidate is
trained by the same engine (steps/training/loop.py) with the same settings unless it overrides them, on the same
rows, and scored on the same test rows.

Measured per candidate: test accuracy, F1 and ROC-AUC; training samples/s and seconds; inference latency at batch
1 (median over single reviews, tokenization included) and texts/s at batch 64 (tokenization included), on the
threads this process has; parameters (learned numbers) and size on disk (the saved weights and tokenizer, or the
pickled TF-IDF pipeline).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from schemas import LABEL_COLUMN, TEXT_COLUMN
from steps import settings
from steps.runtime.errors import ReviewflowError
from steps.training.auto_model import AUTO, choose_model, recipe_values

TFIDF = "tfidf"
MAX_CANDIDATES = 12
OVERRIDABLE = tuple(s.name for s in settings.select("training", "max-length"))
METRICS = ("accuracy", "f1", "roc_auc", "train_samples_per_s", "train_seconds", "latency_ms_batch1",
           "texts_per_s_batch64")
LATENCY_REVIEWS = 32  # single-review predictions timed for the batch-1 latency (median)
THROUGHPUT_REVIEWS = 512  # reviews scored in batches of 64 for texts/s
SPEC = re.compile(r"^([^\[\]]+?)(?:\[([^\[\]]*)\])?$")


@dataclass(frozen=True)
class Candidate:
    spec: str  # as written, e.g. "minilm[epochs=3]": the candidate's name in tables and MLflow
    model: str  # what ReviewFlow's --model gets, or "tfidf"
    overrides: dict = field(default_factory=dict)  # option name -> value

    @property
    def is_tfidf(self) -> bool:
        return self.model == TFIDF


def _split_specs(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += char == "["
        depth -= char == "]"
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _value(setting, text: str):
    text = text.strip()
    try:
        if setting.is_flag:
            if text.lower() not in ("true", "false", "on", "off", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "on", "1")
        return setting.type(text)
    except ValueError:
        raise ReviewflowError(f"--models: {setting.name}={text!r} is not a valid {setting.type.__name__}") from None


def parse_candidates(text: str) -> list[Candidate]:
    """`minilm,tfidf,minilm[epochs=3]` -> Candidates; a clear error for anything that cannot be compared."""
    specs = _split_specs(text or "")
    if not any(specs):
        raise ReviewflowError("--models needs at least one candidate, e.g. --models minilm,tfidf")
    candidates = []
    for spec in specs:
        match = SPEC.match(spec)
        if not spec or not match:
            raise ReviewflowError(f"--models {text!r}: cannot read candidate {spec!r}; write MODEL or "
                                  "MODEL[setting=value,...], candidates separated by commas")
        model, options = match.group(1).strip(), match.group(2)
        overrides = {}
        for pair in filter(None, (p.strip() for p in (options or "").split(","))):
            name, sep, value = pair.partition("=")
            name = name.strip().removeprefix("--")
            if not sep or name not in OVERRIDABLE:
                raise ReviewflowError(f"--models: {spec}: {pair!r} is not SETTING=VALUE with a setting of "
                                      f"{', '.join(OVERRIDABLE)}")
            overrides[name] = _value(settings.setting(name), value)
        if model == TFIDF and overrides:
            raise ReviewflowError(f"--models: {spec}: the TF-IDF baseline takes no training settings")
        settings.check(overrides)
        if model == AUTO:  # what ReviewFlow's default would train on this machine
            model = choose_model(AUTO).model
        candidates.append(Candidate(spec, model, overrides))
    names = [c.spec for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ReviewflowError(f"--models lists {', '.join(duplicates)} more than once")
    if len(candidates) > MAX_CANDIDATES:
        raise ReviewflowError(f"--models: at most {MAX_CANDIDATES} candidates, got {len(candidates)}")
    return candidates


def check_candidates(candidates: list[Candidate]) -> None:
    """Fail early on a model that cannot be resolved here (a missing directory, an uninstalled packaged encoder);
    Hub ids are only checked when they are loaded."""
    from steps.training.models import resolve

    for candidate in candidates:
        if not candidate.is_tfidf:
            resolve(candidate.model)


def candidate_values(base: dict, candidate: Candidate) -> dict:
    """The training settings and max-length (by option name) the candidate is trained with; `epochs` 0 is the
    candidate model's recipe."""
    values = {**{k: v for k, v in base.items() if k in OVERRIDABLE}, **candidate.overrides}
    return values if candidate.is_tfidf else recipe_values(candidate.model, values)


# --- scoring raw texts, as a served model would --------------------------------------------------------------
class TransformerScorer:
    """Texts in, positive-class probabilities out: tokenizer + model, length-sorted batches (as the pyfunc)."""

    def __init__(self, model, tokenizer, max_length: int):
        from steps.training.device import pick_device

        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.device = pick_device()
        self.model.to(self.device).eval()

    def __call__(self, texts, batch_size: int = 64):
        import numpy as np
        import torch

        texts = [str(t) for t in texts]
        probs = np.zeros(len(texts))
        order = np.argsort([len(t) for t in texts], kind="stable")
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                batch = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                       padding=True, return_tensors="pt", return_token_type_ids=False)
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits.float()
                probs[rows] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        return probs


class TfidfScorer:
    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, texts, batch_size: int = 64):
        import numpy as np

        texts = [str(t) for t in texts]
        return np.concatenate([self.pipeline.predict_proba(texts[i:i + batch_size])[:, 1]
                               for i in range(0, len(texts), batch_size)]) if texts else np.zeros(0)


def measure_speed(scorer, texts, single: int = LATENCY_REVIEWS, batched: int = THROUGHPUT_REVIEWS) -> dict:
    """Median latency of one review (ms) and texts/s at batch 64, on raw texts (tokenization included)."""
    import numpy as np

    texts = [str(t) for t in texts]
    if not texts:
        return {"latency_ms_batch1": float("nan"), "texts_per_s_batch64": float("nan")}
    for text in texts[:3]:  # warm-up: first calls allocate and pick kernels
        scorer([text], 1)
    latencies = []
    for text in texts[:single]:
        started = time.perf_counter()
        scorer([text], 1)
        latencies.append(time.perf_counter() - started)
    pool = (texts * (batched // len(texts) + 1))[:batched]
    scorer(pool[:64], 64)
    started = time.perf_counter()
    scorer(pool, 64)
    seconds = time.perf_counter() - started
    return {"latency_ms_batch1": round(float(np.median(latencies)) * 1000, 3),
            "texts_per_s_batch64": round(len(pool) / seconds, 1)}


def _directory_bytes(path) -> int:
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --- one candidate on one fold ---------------------------------------------------------------------------------
def run_candidate(candidate: Candidate, split, values: dict, seed: int = 0, measure: bool = True,
                  extra: dict | None = None, log=print) -> dict:
    """Train `candidate` on split.train (validation for the best epoch), score split.test; with `measure`, also
    the speed and size figures and the accuracy on each labelled frame of `extra` ({name: frame}: other data,
    e.g. out-of-domain reviews). Returns one table row (plain data)."""
    from steps.evaluation.metrics import classification_metrics

    labels = split.test[LABEL_COLUMN].to_numpy()
    texts = split.test[TEXT_COLUMN].astype(str).tolist()
    import torch

    row = {"candidate": candidate.spec, "model": candidate.model, "train_rows": len(split.train),
           "test_rows": len(split.test)}
    if candidate.is_tfidf:
        from steps.evaluation.baseline import fit_and_score, serialized

        pipeline, result = fit_and_score(split.train, split.test, seed)
        probs = result.probabilities
        row.update(train_seconds=result.train_seconds,
                   train_samples_per_s=len(split.train) / result.train_seconds if result.train_seconds else 0.0,
                   parameters=result.parameters, size_bytes=len(serialized(pipeline)), epochs_run=None,
                   settings=f"C={result.c:g}")
        scorer = TfidfScorer(pipeline)
    else:
        import tempfile

        from steps.evaluation.evaluate import predict_proba
        from steps.training.config import TrainConfig
        from steps.training.device import seed_everything
        from steps.training.loop import train_classifier
        from steps.training.models import load_classifier, load_tokenizer
        from steps.training.tokenize import tokenize_split

        max_length = int(values["max-length"])
        config = TrainConfig.from_values(values)
        tokenizer = load_tokenizer(candidate.model)
        tokens = tokenize_split(split.frames(), tokenizer, max_length)
        seed_everything(config.seed)
        model = load_classifier(candidate.model)
        result = train_classifier(model, tokens["train"], tokens["validation"], config, log=log)
        probs = predict_proba(model, tokens["test"])
        with tempfile.TemporaryDirectory(prefix="reviewflow-size-") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            size = _directory_bytes(tmp)
        row.update(train_seconds=result.train_seconds, train_samples_per_s=result.samples_per_s,
                   parameters=int(sum(p.numel() for p in model.parameters())), size_bytes=size,
                   epochs_run=len(result.history), settings=", ".join(f"{k}={v}" for k, v in values.items()))
        scorer = TransformerScorer(model, tokenizer, max_length)
    metrics = classification_metrics(labels, probs)
    row.update({k: metrics[k] for k in ("accuracy", "f1", "roc_auc")})
    if measure:
        row.update(measure_speed(scorer, texts))
        row["extra_accuracy"] = extra_accuracy(scorer, extra or {})
    row["train_seconds"] = round(row["train_seconds"], 2)
    row["train_samples_per_s"] = round(row["train_samples_per_s"], 2)
    log(f"{candidate.spec}: accuracy {row['accuracy']:.4f}, F1 {row['f1']:.4f}, ROC-AUC {row['roc_auc']:.4f}, "
        f"trained in {row['train_seconds']:.1f} s" + (f", {row['latency_ms_batch1']:.1f} ms per review, "
                                                       f"{row['texts_per_s_batch64']:.0f} texts/s at batch 64"
                                                       if measure else ""))
    row["threads"] = torch.get_num_threads()  # after training and the speed figures: the share may have changed
    return row


def extra_accuracy(scorer, frames: dict) -> dict:
    """{name: accuracy} of the scorer on each labelled frame (threshold 0.5)."""
    import numpy as np

    out = {}
    for name, frame in frames.items():
        probs = scorer(frame[TEXT_COLUMN].astype(str).tolist(), 64)
        out[name] = round(float(np.mean((probs >= 0.5).astype(int) == frame[LABEL_COLUMN].to_numpy().astype(int))), 4)
    return out


def load_extra(paths: str, seed: int = 0) -> dict:
    """`--extra-data a.csv,b.csv`: each file read and mapped like --data (needs reviewText and isPositive)."""
    from pathlib import Path

    from steps.data.ingest import load_reviews
    from steps.data.mapping import IngestOptions

    frames = {}
    for path in filter(None, (p.strip() for p in (paths or "").split(","))):
        name = Path(path).stem if not path.startswith("sample:") else path
        if name in frames:
            raise ReviewflowError(f"--extra-data lists {name} twice")
        frames[name] = load_reviews(path, 0, seed, IngestOptions()).frame
        frames[name] = frames[name][frames[name][LABEL_COLUMN].notna()].reset_index(drop=True)
        if not len(frames[name]):
            raise ReviewflowError(f"--extra-data {path}: no labelled rows ({LABEL_COLUMN}) to score")
    return frames


def aggregate(rows: list[dict]) -> dict:
    """One row per candidate from its folds: the mean of each measured figure and, over 2+ folds, its std."""
    import numpy as np

    first = rows[0]
    out = {k: first[k] for k in ("candidate", "model", "parameters", "size_bytes", "settings", "extra_accuracy")
           if k in first}
    out["folds"] = len(rows)
    out["train_rows"] = int(np.mean([r["train_rows"] for r in rows]))
    out["test_rows"] = int(sum(r["test_rows"] for r in rows))
    for name in METRICS:
        values = [r[name] for r in rows if r.get(name) is not None and r[name] == r[name]]
        if values:
            out[name] = round(float(np.mean(values)), 6)
            if len(values) > 1:
                out[f"{name}_std"] = round(float(np.std(values, ddof=1)), 6)
    return out


def ranked(rows: list[dict]) -> list[dict]:
    """Best first: higher F1, then higher accuracy, then lower latency."""
    return sorted(rows, key=lambda r: (-r.get("f1", 0.0), -r.get("accuracy", 0.0),
                                       r.get("latency_ms_batch1", float("inf"))))


def review_flow_options(values: dict) -> dict:
    """ReviewFlow's data, model and training options (by option name) whose value in `values` differs from
    ReviewFlow's default."""
    return {s.name: values[s.name] for s in settings.select("data", "model", "training")
            if s.name in values and values[s.name] != s.default}


def review_flow_command_for(values: dict, flow_file: str = "flows/review_flow.py") -> str:
    """`python flows/review_flow.py run ...` with review_flow_options(values): flags bare, values quoted."""
    import shlex

    options = [f"--{name}" if settings.BY_NAME[name].is_flag else f"--{name} {shlex.quote(str(value))}"
               for name, value in review_flow_options(values).items()]
    return " ".join([f"python {flow_file} run", *options])


def review_flow_command(row: dict, base: dict, flow_file: str = "flows/review_flow.py") -> str:
    """The ReviewFlow command that trains the candidate of `row` on the same data with the same settings: the
    options whose value differs from ReviewFlow's default (data options, training settings, overrides; the model
    always differs: the default, auto, may train another one on another machine)."""
    return review_flow_command_for({**base, **parse_candidates(row["candidate"])[0].overrides, "model": row["model"]},
                                   flow_file)


def _cell(row: dict, name: str, digits: int) -> str:
    value = row.get(name)
    if value is None or value != value:
        return "n/a"
    text = f"{value:,.{digits}f}"
    std = row.get(f"{name}_std")
    return f"{text} ± {std:,.{digits}f}" if std is not None else text


COLUMNS = (("accuracy", "accuracy", 4), ("F1", "f1", 4), ("ROC-AUC", "roc_auc", 4),
           ("train samples/s", "train_samples_per_s", 1), ("train s", "train_seconds", 1),
           ("latency ms (batch 1)", "latency_ms_batch1", 2), ("texts/s (batch 64)", "texts_per_s_batch64", 0))


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of the comparison table, best first; one accuracy column per --extra-data file."""
    extra = list(dict.fromkeys(name for r in rows for name in r.get("extra_accuracy") or {}))
    headers = ["candidate", *[c[0] for c in COLUMNS], "parameters", "size MB", *[f"accuracy {n}" for n in extra]]
    cells = [[r["candidate"], *[_cell(r, key, digits) for _, key, digits in COLUMNS], f"{r['parameters']:,}",
              f"{r['size_bytes'] / 1e6:,.1f}",
              *[f"{(r.get('extra_accuracy') or {}).get(n, float('nan')):.4f}" for n in extra]] for r in ranked(rows)]
    return headers, cells


def table_lines(rows: list[dict]) -> list[str]:
    """The table as aligned text (stdout, docs)."""
    headers, cells = table(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.ljust(w) if i == 0 else v.rjust(w)  # noqa: E731
                                    for i, (v, w) in enumerate(zip(values, widths)))
    return [line(headers), "  ".join("-" * w for w in widths), *[line(c) for c in cells]]


def accuracy_latency_plot(rows: list[dict]) -> bytes:
    """Test accuracy against latency at batch 1 (log scale), one labelled point per candidate (± std with CV)."""
    from steps.runtime.plots import SINGLE, figure, png

    fig, ax = figure(SINGLE)
    for row in ranked(rows):
        x, y = row.get("latency_ms_batch1"), row.get("accuracy")
        if x is None or y is None or x != x:
            continue
        ax.errorbar([x], [y], yerr=[row.get("accuracy_std", 0.0)], xerr=[row.get("latency_ms_batch1_std", 0.0)],
                    fmt="o", capsize=3, markersize=7)
        ax.annotate(row["candidate"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("latency per review at batch 1 (ms, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs latency")
    ax.margins(x=0.25, y=0.15)
    return png(fig)


# --- MLflow: one child run per candidate under the flow's parent run -----------------------------------------
def open_candidate_run(mlflow_client, parent_run_id: str, candidate: Candidate, values: dict, pathspec: str) -> str:
    parent = mlflow_client.get_run(parent_run_id)
    run = mlflow_client.create_run(parent.info.experiment_id, run_name=candidate.spec, tags={
        "mlflow.parentRunId": parent_run_id, "candidate": candidate.spec, "candidate_model": candidate.model,
        "metaflow_pathspec": pathspec})
    from steps.runtime.tracking import log_params

    log_params(mlflow_client, run.info.run_id, {"candidate": candidate.spec, "model": candidate.model,
                                                **({} if candidate.is_tfidf else values)})
    return run.info.run_id


def log_fold(mlflow_client, run_id: str, row: dict, fold: int) -> None:
    from steps.runtime.tracking import StepRun

    handle = StepRun(mlflow_client, run_id)
    handle.metrics({f"fold_test_{k}" if k in ("accuracy", "f1", "roc_auc") else f"fold_{k}": row[k]
                    for k in METRICS if k in row}, step=fold)
    handle.flush()


def close_candidate_run(mlflow_client, run_id: str, row: dict) -> None:
    from steps.runtime.tracking import StepRun

    handle = StepRun(mlflow_client, run_id)
    names = {"accuracy": "test_accuracy", "f1": "test_f1", "roc_auc": "test_roc_auc"}
    handle.metrics({names.get(k, k): v for k, v in row.items() if k in METRICS})
    handle.metrics({f"{names.get(k[:-4], k[:-4])}_std": v for k, v in row.items() if k.endswith("_std")})
    handle.metrics({"parameters": row["parameters"], "size_bytes": row["size_bytes"], "folds": row["folds"]})
    handle.metrics({f"extra_accuracy.{name}": v for name, v in (row.get("extra_accuracy") or {}).items()})
    handle.json(row, "comparison/row.json")
    handle.flush()
    mlflow_client.set_terminated(run_id, "FINISHED")
