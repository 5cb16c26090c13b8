"""The evaluate step's card: test metrics, the champion on the same rows, slices, plots, the most confident errors."""
from __future__ import annotations

from flowkit.cards import fmt, one_decimal, percent, short


def evaluation_card(evaluation, verdict=None, baseline: dict | None = None) -> list:
    """Components for the evaluate step's card: metrics, champion comparison, the TF-IDF baseline (a
    steps.evaluation.baseline.BaselineResult.summary()), slices and the plots."""
    from metaflow.cards import Image, Markdown, Table

    from steps.evaluation.metrics import COMPARED

    m = evaluation.metrics
    parts = [Markdown(f"# Test evaluation\n{m['rows']} test reviews, {m['positive_share']:.1%} positive. "
                      "All numbers come from softmax probabilities of the positive class, threshold 0.5.")]
    if evaluation.comparison:
        c = evaluation.comparison
        rows = [[k, fmt(m[k]), fmt(c["champion"][k]), f"{c['delta'][k]:+.4f}"] for k in COMPARED]
        parts.append(Markdown(f"## This model vs champion v{c['champion_version']} (same test rows)"))
        parts.append(Table(rows, headers=["metric", "this model", f"champion v{c['champion_version']}", "delta"]))
        mc = c["mcnemar"]
        parts.append(Markdown(f"{mc['method']}: this model alone right on {mc['challenger_only_right']} rows, "
                              f"champion alone right on {mc['champion_only_right']}; p = {mc['p_value']:.4g}."))
    else:
        parts.append(Table([[k, fmt(m[k])] for k in COMPARED], headers=["metric", "this model"]))
        parts.append(Markdown(
            f"Champion v{evaluation.champion_version} could not be scored: {evaluation.champion_error}"
            if evaluation.champion_error else "No champion yet: nothing to compare with."))
    if verdict is not None:
        parts.append(Markdown(f"**Promotion gate: {verdict.tags()['gate']}** ({'; '.join(verdict.reasons)})"))
    parts.extend(serving_section(evaluation.serving))
    if baseline is not None:
        from flowkit.cards.explanations import baseline_section

        parts.extend(baseline_section(m, baseline, verdict))
    parts.append(Markdown("## Confusion matrix"))
    parts.append(Table([["actual negative", m["true_negatives"], m["false_positives"]],
                        ["actual positive", m["false_negatives"], m["true_positives"]]],
                       headers=["", "predicted negative", "predicted positive"]))
    parts.append(Markdown("## Accuracy by slice"))
    parts.append(Table([[s["slice"], s["bucket"], s["rows"], f"{s['positive_share']:.2f}", fmt(s["accuracy"])]
                        for s in evaluation.slices],
                       headers=["slice", "bucket", "rows", "positive share", "accuracy"]))
    for name, png in evaluation.plots.items():
        parts.append(Image(src=png, label=name.removesuffix(".png").replace("_", " ")))
    parts.extend(confident_errors_section(evaluation.confident_errors))
    return parts


ERROR_TEXT_CHARS = 300


def confident_errors_section(errors: list[dict]) -> list:
    from metaflow.cards import Markdown, Table

    names = {0: "negative", 1: "positive"}
    if not errors:
        return [Markdown("## Most confident errors\nNo test review was misclassified.")]
    rows = [[i + 1, e["row"], names.get(e["label"], e["label"]), names.get(e["predicted"], e["predicted"]),
             f"{e['confidence']:.3f}", short(e["text"], ERROR_TEXT_CHARS)] for i, e in enumerate(errors)]
    return [Markdown(f"## Most confident errors\nThe {len(errors)} misclassified test reviews the model was surest "
                     "of (confidence = the probability it gave its wrong answer). Read these first: wrong labels, "
                     "sarcasm, negation and product words the model over-trusts show up here."),
            Table(rows, headers=["#", "test row", "true label", "predicted", "confidence", "review text"])]


def serving_section(serving: dict) -> list:
    """What the registered model serves with, and how each backend did on the test rows."""
    from metaflow.cards import Markdown, Table

    if not serving:
        return []
    parts = [Markdown(f"## Served as\nThe numbers above are those of the logged model `{serving['model_uri']}`, "
                      f"scored by its own predict code, files and settings with the backend it serves with: "
                      f"**{serving['backend']}** ({serving['chosen_because']}).")]
    if serving.get("parity"):
        parts.append(Table([[backend, fmt(f["accuracy"]), fmt(f["f1"]), f"{f['max_abs_diff']:.2e}",
                             percent(f.get("flipped")), one_decimal(f["texts_per_s"]),
                             "passed" if f["passed"] else f"FAILED: {f.get('failed_because', '')}".rstrip(": ")]
                            for backend, f in serving["parity"].items()],
                           headers=["backend", "accuracy", "F1", "max |p - p_torch|", "predictions flipped",
                                    "texts/s", "parity"]))
    graph = serving.get("graph") or {}
    if graph:
        fused = ", ".join(f"{op} x{n}" for op, n in graph.get("fused", {}).items())
        note = f" (`{graph['note']}`)" if graph.get("note") else ""
        parts.append(Markdown("The ONNX graphs: " + (f"fused into onnxruntime's kernels: {fused}{note}" if
                                                     graph.get("optimized") else f"the plain export, not fused{note}")
                              + "; int8 weights per output channel, the classifier head in fp32."))
    return parts
