"""Evaluate: score the test split; metrics, slices, calibration and plots; compare with the champion.

Everything a user sees is computed from softmax probabilities of the positive class (never logits), with
scikit-learn / scipy. The champion is scored through its own registered pyfunc on the raw test texts, so a
champion trained with another tokenizer or max_length is judged on exactly the same rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas import TEXT_COLUMN
from steps.evaluation.metrics import (
    calibration_bins,
    classification_metrics,
    compare_with_champion,
    comparison_metrics,
    most_confident_errors,
    slice_accuracy,
    slice_metrics,
)
from steps.evaluation.plots import evaluation_plots
from steps.training.batching import collate, sorted_batches


def predict_proba(model, tokens, batch_size: int = 64, device=None):
    """Positive-class probability for every row of `tokens`, in row order."""
    import numpy as np
    import torch

    from steps.training.device import autocast_dtype, pick_device

    device = device or pick_device()
    dtype = autocast_dtype(device)
    model.to(device).eval()
    probs = np.zeros(len(tokens), dtype=np.float64)
    with torch.inference_mode():
        for rows in sorted_batches(tokens.lengths, batch_size):
            ids, mask, _ = collate(tokens, rows, device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            probs[rows] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
    return probs


def served_probabilities(model, texts) -> object:
    """Positive-class probabilities of a loaded pyfunc, through its own predict path (what serving runs), in
    requests of CHUNK_TEXTS texts: the chunks a request of all of them is scored in by this version's model, so
    the answers are the same, and a champion logged before models chunked their requests does not tokenize
    200,000 test rows at once (about 2 GB more)."""
    import numpy as np
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from steps.serving.classifier_model import CHUNK_TEXTS

    texts = [str(t) for t in texts]
    out = []
    for start in range(0, len(texts), CHUNK_TEXTS):
        frame = pd.DataFrame({TEXT_COLUMN: texts[start:start + CHUNK_TEXTS]})
        try:
            scored = model.predict(frame, params={"output": "probabilities"})
        except MlflowException:  # a model registered by reviewflow 0.1 takes no params and returns both columns
            scored = model.predict(frame)
        out.append(scored["probability_positive"].to_numpy(dtype=float))
    return np.concatenate(out) if out else np.zeros(0, dtype=float)


def score_registered_model(model_uri: str, texts, batch_size: int = 64):
    """Positive-class probabilities of a registered model (its own pyfunc: its tokenizer, backend, max_length)."""
    import mlflow

    config = {"batch_size": batch_size, "inference_log": False}  # test rows are no traffic: keep them out of the log
    return served_probabilities(mlflow.pyfunc.load_model(model_uri, model_config=config), texts)


# --- the evaluate step -------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    probabilities: object  # np.ndarray: positive-class probability per test row, in row order
    metrics: dict
    slices: list[dict]
    calibration: dict
    champion_version: int | None = None  # the champion when evaluation started (None: there was none)
    champion_probabilities: object = None
    comparison: dict | None = None  # compare_with_champion(); None without a champion or when scoring it failed
    champion_error: str | None = None  # why the champion could not be scored
    plots: dict = field(default_factory=dict)  # file name -> PNG bytes
    confident_errors: list[dict] = field(default_factory=list)  # most_confident_errors(), most confident first
    serving: dict = field(default_factory=dict)  # the served model: backend, why, each backend's parity figures

    def summary_lines(self, verdict=None) -> list[str]:
        m = self.metrics
        lines = [f"Test metrics: accuracy {m['accuracy']:.4f}, F1 {m['f1']:.4f}, ROC-AUC {m['roc_auc']:.4f}, "
                 f"ECE {m['ece']:.4f} ({m['rows']} reviews)"]
        if self.comparison:
            c = self.comparison
            lines.append(f"Champion v{c['champion_version']} on the same rows: F1 {c['champion']['f1']:.4f} "
                         f"(delta {c['delta']['f1']:+.4f}), McNemar exact p {c['mcnemar']['p_value']:.4g}")
        elif self.champion_error:
            lines.append(f"champion v{self.champion_version} could not be scored: {self.champion_error}")
        if verdict is not None:
            lines.append(f"Gate {verdict.tags()['gate']}: {'; '.join(verdict.reasons)}")
        return lines

    def mlflow_metrics(self) -> dict:
        out = {f"test_{k}": v for k, v in self.metrics.items()}
        out.update(slice_metrics(self.slices))
        if self.comparison:
            out.update(comparison_metrics(self.comparison))
        return out


def evaluate_predictions(labels, probs, token_lengths, test_rows, history=None, champion_uri: str | None = None,
                         champion_version: int | None = None, batch_size: int = 64) -> Evaluation:
    """Metrics, slices, calibration and plots of the test split's probabilities `probs` and, if there is a
    champion, the champion's on the same rows (scored through its own pyfunc on the raw texts) and the comparison."""
    import numpy as np

    labels = np.asarray(labels).astype(int)
    verified = test_rows["verified"] if "verified" in test_rows.columns else None
    evaluation = Evaluation(
        probabilities=probs,
        metrics=classification_metrics(labels, probs),
        slices=slice_accuracy(labels, probs, token_lengths, verified),
        calibration=calibration_bins(labels, probs),
        champion_version=champion_version,
        confident_errors=most_confident_errors(test_rows[TEXT_COLUMN].tolist(), labels, probs),
    )
    if champion_uri is not None:
        try:
            champion_probs = score_registered_model(champion_uri, test_rows[TEXT_COLUMN].tolist(), batch_size)
        except Exception as err:  # any failure to load/score it: recorded; the gate then refuses to promote
            evaluation.champion_error = f"{type(err).__name__}: {err}"[:1000]
        else:
            evaluation.champion_probabilities = champion_probs
            evaluation.comparison = compare_with_champion(labels, probs, champion_probs, champion_version)
    evaluation.plots = evaluation_plots(labels, probs, history, evaluation.champion_probabilities,
                                        champion_version)
    return evaluation


def log_evaluation(run, evaluation: Evaluation, verdict=None) -> None:
    """Metrics, the evaluation JSON and the plots (PNG) on the evaluate step's MLflow run; the verdict as tags."""
    run.metrics(evaluation.mlflow_metrics())
    run.json({"metrics": evaluation.metrics, "slices": evaluation.slices, "calibration": evaluation.calibration,
              "champion_version": evaluation.champion_version, "champion_comparison": evaluation.comparison,
              "champion_error": evaluation.champion_error, "confident_errors": evaluation.confident_errors},
             "evaluation/evaluation.json")
    for name, png in evaluation.plots.items():
        run.image(png, f"plots/{name}")
    if verdict is not None:
        run.tags(verdict.tags())


def evaluate_served_model(run, parent_run_id: str, classifier, tokens, test_rows, history,
                          registered_model: str, *, max_length: int, trained_by: str, gate_settings: dict,
                          serving_backend: str = "auto", cuda_precision: str = "fp32",
                          baseline_f1: float | None = None, parity_rules=None):
    """The evaluate step. Log the trained classifier as the model that will be served (its ONNX variants made,
    every backend scoring the test rows once, their parity checked and the serving backend chosen:
    steps/serving/package.py), take the served backend's scores as the evaluation's, score the current champion of
    `registered_model` through its own pyfunc, judge the promotion gate, and log it all: everything on the step's
    run, the test metrics on the LoggedModel (with the test dataset), the headline ones and the gate on the flow's
    parent run. `classifier`: the trained model, loaded once (steps.training.models.loaded) or packed (bytes).
    `baseline_f1`: the TF-IDF baseline's F1 on the same test rows, for the gate's baseline rule (gate_settings'
    ignore_baseline). `parity_rules`: steps.serving.package.ParityRules. Returns (Evaluation, GateVerdict,
    ServedModel)."""
    import mlflow

    from schemas import LABEL_COLUMN
    from steps.evaluation.gate import judge_evaluation, with_baseline
    from steps.runtime.tracking import CHAMPION, alias_version
    from steps.serving.package import ParityRules, build_served_model, find_served_model
    from steps.training.models import loaded

    texts, labels = test_rows[TEXT_COLUMN].astype(str).tolist(), test_rows[LABEL_COLUMN].to_numpy()
    experiment_id = run.client.get_run(run.run_id).info.experiment_id
    served, probs = find_served_model(experiment_id, trained_by), None
    if served is None:
        with loaded(classifier) as model:
            served, probs = build_served_model(model.directory, texts, labels, max_length=max_length,
                                               trained_by=trained_by, backend=serving_backend,
                                               cuda_precision=cuda_precision, rules=parity_rules or ParityRules(),
                                               model=model.model, tokenizer=model.tokenizer)
    else:
        print(f"reusing the model an earlier attempt logged for {trained_by}: {served.model_uri} ({served.backend})")
    if probs is None:  # logged by an earlier attempt: its scores come from loading it
        probs = served_probabilities(mlflow.pyfunc.load_model(served.model_uri,
                                                              model_config={"inference_log": False}), texts)
    champion = alias_version(run.client, registered_model, CHAMPION)
    evaluation = evaluate_predictions(
        labels, probs, tokens.lengths, test_rows, history,
        champion_uri=None if champion is None else f"models:/{registered_model}/{champion}", champion_version=champion)
    evaluation.serving = {"model_uri": served.model_uri, "backend": served.backend, "chosen_because": served.chose,
                          "parity": served.parity, "graph": served.graph}
    rules = dict(gate_settings)
    ignore_baseline = bool(rules.pop("ignore_baseline", False))
    verdict = with_baseline(judge_evaluation(evaluation.metrics, champion, evaluation.comparison, **rules),
                            baseline_f1, ignore_baseline)
    log_evaluation(run, evaluation, verdict)
    run.tags(served.tags())
    test_set = mlflow.data.from_pandas(test_rows[[TEXT_COLUMN, LABEL_COLUMN]], name="test", targets=LABEL_COLUMN)
    mlflow.log_metrics({f"test_{k}": float(v) for k, v in evaluation.metrics.items() if isinstance(v, (int, float))},
                       model_id=served.model_id, dataset=test_set, run_id=run.run_id)
    headline = {f"test_{k}": evaluation.metrics[k] for k in ("accuracy", "f1", "roc_auc")}
    run.client.log_batch(parent_run_id, metrics=[_metric(k, v) for k, v in headline.items()])
    run.client.set_tag(parent_run_id, "gate", verdict.tags()["gate"])
    return evaluation, verdict, served


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)
