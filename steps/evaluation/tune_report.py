"""What TuneFlow shows at its end (steps/evaluation/tune.py does the search): the trials table, the optimisation
history, parameter importances (Optuna's fANOVA evaluator), the best recipe scored once on the test rows, and the
ReviewFlow command that trains it."""
from __future__ import annotations

TOP_TRIALS = 10


def best_values(trial, held: dict, base: dict, model: str) -> dict:
    """Every setting the best trial trained with, by option name: as it recorded them (a trial of an earlier run
    too), else its sampled values over this run's fixed ones; the model resolved (not `auto`, which could pick
    another one elsewhere; so steps.evaluation.compare.review_flow_options always names it)."""
    return {**(trial.user_attrs.get("values") or {**base, **held, **trial.params}), "model": model}


def validation_noise(figure: str, value: float, rows: int) -> str:
    """How far apart two trials' validation figures must be to be told apart, in words: the half-width of the 95%
    interval of a share measured on `rows` reviews (F1 and accuracy are shares; a loss is not: '')."""
    import math

    if figure == "val_loss" or not rows or value is None:
        return ""
    half = 1.96 * math.sqrt(max(value * (1 - value), 0.0) / rows) * 100
    return (f"measured on {rows:,} validation rows, a figure near {value:.2f} has a 95% interval of about "
            f"±{half:.1f} points: trials closer than that are not told apart, and the best of many is likely to "
            "score lower on new rows")


def trial_rows(study, figure: str) -> list[dict]:
    """One plain row per trial (number, state, value, params, seconds, pruned at), in trial order."""
    from steps.evaluation.tune import ran

    rows = []
    for t in ran(study.get_trials(deepcopy=False)):
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), figure: t.value,
                     "epochs_reported": len(t.intermediate_values), "stopped_at_epoch": last,
                     "curve": {int(k): float(v) for k, v in sorted(t.intermediate_values.items())},
                     "params": dict(t.params), "seconds": t.user_attrs.get("seconds"),
                     "error": t.user_attrs.get("error"), "mlflow_run_id": t.user_attrs.get("mlflow_run_id")})
    return rows


def ranked(rows: list[dict], figure: str, maximize: bool) -> list[dict]:
    complete = [r for r in rows if r["state"] == "complete" and r[figure] is not None]
    return sorted(complete, key=lambda r: (-r[figure] if maximize else r[figure], r["trial"]))


def _param_text(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else str(value)


def table(rows: list[dict], figure: str, maximize: bool, space) -> tuple[list[str], list[list[str]]]:
    """(headers, cells): the best complete trials first, at most TOP_TRIALS."""
    names = [d.name for d in space]
    headers = ["trial", figure, *names, "seconds"]
    cells = [[str(r["trial"]), f"{r[figure]:.4f}", *[_param_text(r["params"].get(n, "")) for n in names],
              "" if r["seconds"] is None else f"{r['seconds']:.0f}"]
             for r in ranked(rows, figure, maximize)[:TOP_TRIALS]]
    return headers, cells


def table_lines(rows: list[dict], figure: str, maximize: bool, space) -> list[str]:
    headers, cells = table(rows, figure, maximize, space)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return [line(headers), "  ".join("-" * w for w in widths), *[line(c) for c in cells]]


def importances(study, seed: int = 0) -> tuple[dict, str]:
    """({setting: importance}, why there are none) from Optuna's fANOVA evaluator over the complete trials."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"{len(complete)} complete trial(s): importances need at least 2"
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError) as err:  # e.g. every complete trial sampled the same values
        return {}, f"not computed: {err}"
    return {k: round(float(v), 4) for k, v in found.items()}, ""


def history_plot(rows: list[dict], figure: str, maximize: bool) -> bytes:
    """Each trial's score by trial number (pruned ones at the epoch they stopped), and the best so far."""
    from steps.runtime.plots import SINGLE, png
    from steps.runtime.plots import figure as new_figure

    fig, ax = new_figure(SINGLE)
    complete = [r for r in rows if r["state"] == "complete" and r[figure] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["curve"]]
    ax.scatter([r["trial"] for r in complete], [r[figure] for r in complete], label="complete", zorder=3)
    ax.scatter([r["trial"] for r in pruned], [r["curve"][max(r["curve"])] for r in pruned], marker="x",
               label="pruned (score when stopped)", zorder=3)
    best, xs, ys = None, [], []
    for r in sorted(complete, key=lambda r: r["trial"]):
        if best is None or (r[figure] > best if maximize else r[figure] < best):
            best = r[figure]
        xs.append(r["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {figure.removeprefix('val_')}")
    ax.set_title("Optimisation history")
    ax.legend(loc="lower right" if maximize else "upper right", fontsize=8)
    return png(fig)


def importance_plot(found: dict) -> bytes | None:
    if not found:
        return None
    from steps.runtime.plots import SINGLE, png
    from steps.runtime.plots import figure as new_figure

    fig, ax = new_figure(SINGLE)
    names = list(found)[::-1]
    ax.barh(names, [found[n] for n in names])
    ax.set_xlabel("importance (fANOVA: share of the score's variance)")
    ax.set_title("Which settings mattered")
    return png(fig)


def score_on_test(classifier: bytes, frame, max_length: int) -> dict:
    """The best trial's trained classifier on the test rows: accuracy, F1, ROC-AUC and their 95% intervals."""
    from schemas import LABEL_COLUMN, TEXT_COLUMN
    from steps.data.tokens import encode
    from steps.evaluation.evaluate import predict_proba
    from steps.evaluation.metrics import classification_metrics
    from steps.training.models import loaded

    with loaded(classifier) as classified:
        tokens = encode(frame[TEXT_COLUMN].tolist(), frame[LABEL_COLUMN].to_numpy(), classified.tokenizer,
                        max_length)
        probs = predict_proba(classified.model, tokens)
    return classification_metrics(frame[LABEL_COLUMN].to_numpy(), probs)
