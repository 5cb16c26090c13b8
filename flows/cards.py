"""Metaflow card content of reviewflow's steps: built from steps/ results, shown with `card view`."""
from __future__ import annotations


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def evaluation_card(evaluation, verdict=None) -> list:
    """Components for the evaluate step's card: metrics, champion comparison, slices and the plots."""
    from metaflow.cards import Image, Markdown, Table

    from steps.evaluate import COMPARED

    m = evaluation.metrics
    parts = [Markdown(f"# Test evaluation\n{m['rows']} test reviews, {m['positive_share']:.1%} positive. "
                      "All numbers come from softmax probabilities of the positive class, threshold 0.5.")]
    if evaluation.comparison:
        c = evaluation.comparison
        rows = [[k, _fmt(m[k]), _fmt(c["champion"][k]), f"{c['delta'][k]:+.4f}"] for k in COMPARED]
        parts.append(Markdown(f"## This model vs champion v{c['champion_version']} (same test rows)"))
        parts.append(Table(rows, headers=["metric", "this model", f"champion v{c['champion_version']}", "delta"]))
        mc = c["mcnemar"]
        parts.append(Markdown(f"{mc['method']}: this model alone right on {mc['challenger_only_right']} rows, "
                              f"champion alone right on {mc['champion_only_right']}; p = {mc['p_value']:.4g}."))
    else:
        parts.append(Table([[k, _fmt(m[k])] for k in COMPARED], headers=["metric", "this model"]))
        parts.append(Markdown(
            f"Champion v{evaluation.champion_version} could not be scored: {evaluation.champion_error}"
            if evaluation.champion_error else "No champion yet: nothing to compare with."))
    if verdict is not None:
        parts.append(Markdown(f"**Promotion gate: {verdict.tags()['gate']}** ({'; '.join(verdict.reasons)})"))
    parts.append(Markdown("## Confusion matrix"))
    parts.append(Table([["actual negative", m["true_negatives"], m["false_positives"]],
                        ["actual positive", m["false_negatives"], m["true_positives"]]],
                       headers=["", "predicted negative", "predicted positive"]))
    parts.append(Markdown("## Accuracy by slice"))
    parts.append(Table([[s["slice"], s["bucket"], s["rows"], f"{s['positive_share']:.2f}", _fmt(s["accuracy"])]
                        for s in evaluation.slices],
                       headers=["slice", "bucket", "rows", "positive share", "accuracy"]))
    for name, png in evaluation.plots.items():
        parts.append(Image(src=png, label=name.removesuffix(".png").replace("_", " ")))
    return parts


def history_card(name: str, entries: list[dict], champion: int | None) -> list:
    """Components for PromoteFlow's card: the champion and the audit trail, newest first."""
    from metaflow.cards import Markdown, Table

    rows = [[e.get("seq"), e.get("time"), e.get("user"), e.get("action"),
             "-" if e.get("from_version") is None else f"v{e['from_version']}", f"v{e.get('to_version')}",
             e.get("gate", ""), e.get("metaflow_run", ""), e.get("reason", "")] for e in reversed(entries)]
    return [Markdown(f"# {name}: champion {'none' if champion is None else f'v{champion}'}"),
            Table(rows, headers=["#", "time (UTC)", "user", "action", "from", "to", "gate", "Metaflow run",
                                 "reason"])]
