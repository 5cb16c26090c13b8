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


def score_registered_model(model_uri: str, texts, batch_size: int = 64):
    """Positive-class probabilities of a registered model (its own pyfunc: its tokenizer, its max_length)."""
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_uri, model_config={"batch_size": batch_size})
    out = model.predict(pd.DataFrame({TEXT_COLUMN: [str(t) for t in texts]}))
    return out["probability_positive"].to_numpy(dtype=float)


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


def evaluate_test_split(classifier, tokens, test_rows, history=None, champion_uri: str | None = None,
                        champion_version: int | None = None, batch_size: int = 64) -> Evaluation:
    """Score the test split with the trained classifier and, if there is one, with the champion (its own
    pyfunc on the raw texts of the same rows); metrics, slices, calibration, comparison and plots."""
    probs = predict_proba(classifier, tokens, batch_size)
    labels = tokens.labels
    verified = test_rows["verified"] if "verified" in test_rows.columns else None
    evaluation = Evaluation(
        probabilities=probs,
        metrics=classification_metrics(labels, probs),
        slices=slice_accuracy(labels, probs, tokens.lengths, verified),
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


def evaluate_against_champion(run, classifier: bytes, tokens, test_rows, history, registered_model: str,
                              min_f1: float, max_regression: float):
    """The evaluate step: score the packed classifier and the current champion of `registered_model` on the test
    split, judge the promotion gate, log everything on the step's run. Returns (Evaluation, GateVerdict)."""
    from steps.evaluation.gate import judge_evaluation
    from steps.lifecycle.promotion import CHAMPION, alias_version
    from steps.training.models import load_classifier, unpacked

    champion = alias_version(run.client, registered_model, CHAMPION)
    with unpacked(classifier) as model_dir:
        evaluation = evaluate_test_split(
            load_classifier(model_dir), tokens, test_rows, history,
            champion_uri=None if champion is None else f"models:/{registered_model}/{champion}",
            champion_version=champion)
    verdict = judge_evaluation(evaluation.metrics, champion, evaluation.comparison, min_f1, max_regression)
    log_evaluation(run, evaluation, verdict)
    return evaluation, verdict
