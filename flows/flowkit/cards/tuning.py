"""TuneFlow's card: where the study stands, the best trials, the best recipe on the test rows (scored once), the
optimisation history, parameter importances and the ReviewFlow command that trains the best recipe."""
from __future__ import annotations

import re


def tuning_card(study: str, counts, budget: int, rows: list[dict], figure: str, maximize: bool, space, held: dict,
                best: dict | None, test: dict | None, history: bytes, importance: bytes | None, importances: dict,
                why_none: str, command: str | None, noise: str = "") -> list:
    from metaflow.cards import Image, Markdown, Table

    from flowkit.cards import fmt
    from flowkit.cards.explanations import inert
    from steps.evaluation.metrics import interval_line
    from steps.evaluation.tune_report import table

    score = f"validation {figure.removeprefix('val_')}"
    parts = [Markdown(f"# Tuning: study {inert(study)}\n{counts.done} of {budget} trials done: {counts.complete} "
                      f"complete, {counts.pruned} pruned (stopped early: clearly losing), {counts.failed} failed "
                      f"(not counted), {counts.running} running. Trials are scored by their {score} only "
                      f"({'higher' if maximize else 'lower'} is better); the test rows are scored once, for the best.")]
    if best is None:
        parts.append(Markdown("**No trial finished**, so there is no best recipe and no test score."))
    else:
        lines = [f"## Best: trial {best['trial']}, {score} {best['value']:.4f}"]
        if test:
            lines.append(f"On the {test['rows']:,} test rows: accuracy **{test['accuracy']:.4f}**, F1 "
                         f"**{test['f1']:.4f}**, ROC-AUC {fmt(test.get('roc_auc'))}. {interval_line(test) or ''}")
        lines.append(f"Weights: {best['weights']}.")
        if noise:
            lines.append(f"Mind the noise: {noise}.")
        fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", command)), default=0))
        lines.append(f"Train it with ReviewFlow:\n{fence}\n{command}\n{fence}")  # longer than any ` in it
        parts.append(Markdown("\n\n".join(lines)))
    headers, cells = table(rows, figure, maximize, space)
    parts.append(Markdown(f"## Best trials (of {sum(r['state'] == 'complete' for r in rows)} complete)"))
    parts.append(Table(cells, headers=headers))
    parts.append(Image(src=history, label="optimisation history"))
    if importance:
        parts.append(Image(src=importance, label="parameter importances"))
        parts.append(Table([[name, f"{value:.3f}"] for name, value in importances.items()],
                           headers=["setting", "importance (fANOVA)"]))
    else:
        parts.append(Markdown(f"Parameter importances: {why_none}."))
    searched = [[d.describe(), "searched"] for d in space] + [[f"{k}: {v}", "fixed"] for k, v in held.items()]
    parts.append(Markdown("## Search space"))
    parts.append(Table(searched, headers=["setting", ""]))
    pruned = [r for r in rows if r["state"] == "pruned"]
    if pruned:
        parts.append(Markdown("## Pruned trials"))
        parts.append(Table([[str(r["trial"]), str(r["stopped_at_epoch"]), f"{r['curve'][r['stopped_at_epoch']]:.4f}"]
                            for r in pruned], headers=["trial", "stopped after epoch", score]))
    failed = [r for r in rows if r["state"] == "fail"]
    if failed:
        parts.append(Markdown("## Failed trials (not counted)"))
        parts.append(Table([[str(r["trial"]), r["error"] or "its worker stopped"] for r in failed],
                           headers=["trial", "why"]))
    return parts
