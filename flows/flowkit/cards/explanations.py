"""The evaluate card's sections on the baseline and on explanations: this model beside the TF-IDF baseline, and
coloured word heatmaps (Layer Integrated Gradients) for the most confident errors and a sample of correct ones.

Review texts are untrusted. Metaflow renders a Markdown component's raw HTML, so a heatmap is built from spans
whose text is made inert first (`inert`): html.escape, and every other character that Markdown or HTML could read
as syntax (brackets, parentheses, asterisks, backticks, ...) written as a numeric character reference. The browser
shows the review as written; nothing in it can become a tag, an attribute, a link or an emphasis.
"""
from __future__ import annotations

import html

from flowkit.cards import fmt

NAMES = {0: "negative", 1: "positive"}


def inert(text: str) -> str:
    """`text` on one line as HTML text that neither HTML nor Markdown can read as markup."""
    escaped = html.escape(" ".join(str(text).split()), quote=True)
    out = []
    for piece in _entities_and_chars(escaped):
        out.append(piece if len(piece) > 1 or piece.isalnum() or piece == " " else f"&#{ord(piece)};")
    return "".join(out)


def _entities_and_chars(escaped: str):
    """Split html.escape's output into its entities (&amp; &lt; &gt; &quot; &#x27;) and single characters."""
    i = 0
    while i < len(escaped):
        if escaped[i] == "&":
            end = escaped.find(";", i)
            yield escaped[i:end + 1]
            i = end + 1
        else:
            yield escaped[i]
            i += 1


def colour(score: float, scale: float) -> str:
    """Green toward positive, red toward negative; opacity = |score| / the review's largest |score|."""
    alpha = 0.0 if scale <= 0 else min(1.0, abs(score) / scale)
    rgb = "22, 163, 74" if score > 0 else "220, 38, 38"
    return f"rgba({rgb}, {alpha * 0.85:.3f})"


def heatmap_html(explanation: dict) -> str:
    """The review's text with every word on a background coloured by its attribution, gaps as written."""
    text, words = explanation["text"], explanation["words"]
    scale = max((abs(w["score"]) for w in words), default=0.0)
    spans, cursor = [], 0
    for word in words:
        start, end = word.get("start"), word.get("end")
        if start is not None and start > cursor:
            spans.append(inert(text[cursor:start]) if text[cursor:start].strip() else " ")
        spans.append(f'<span style="background-color: {colour(word["score"], scale)}; padding: 1px 2px; '
                     f'border-radius: 3px;" title="{word["score"]:+.4f}">{inert(word["text"])}</span>')
        if start is None:
            spans.append(" ")
        cursor = end if end is not None else cursor
    if cursor < len(text) and words and words[-1].get("end") is not None:
        spans.append(inert(text[cursor:]))
    return '<div style="line-height: 1.9; margin: 4px 0 14px 0;">' + "".join(spans) + "</div>"


def baseline_section(metrics: dict, baseline: dict | None, verdict=None) -> list:
    """This model's test metrics beside the TF-IDF baseline's on the same test rows."""
    from metaflow.cards import Markdown, Table

    from steps.evaluation.metrics import COMPARED

    if not baseline:
        return [Markdown("## This model vs the TF-IDF baseline\nNo baseline was trained in this run.")]
    b = baseline["metrics"]
    rows = [[k, fmt(metrics[k]), fmt(b[k]), f"{metrics[k] - b[k]:+.4f}"] for k in COMPARED]
    ignored = verdict is not None and verdict.extra.get("ignore_baseline") == "true"
    rule = ("The gate records this comparison but does not decide on it (`--ignore-baseline`)." if ignored else
            "The gate requires this model's F1 to be above the baseline's (`--ignore-baseline` turns that off).")
    uri = baseline.get("model_uri")
    where = f" The baseline is logged as an MLflow model: `{uri}`." if uri else ""
    return [Markdown(f"## This model vs the TF-IDF baseline (same test rows)\n{baseline['description']}, "
                     f"C = {baseline['c']:g}, trained on the same train split in {baseline['train_seconds']:.1f} s. "
                     f"{rule}{where}"),
            Table(rows, headers=["metric", "this model", "TF-IDF baseline", "delta"])]


def explanations_section(explained: dict) -> list:
    """Word heatmaps for the explained test reviews, with the method, the cost and the convergence deltas."""
    from metaflow.cards import Markdown

    reviews = explained.get("reviews") or []
    if not reviews:
        return [Markdown("## Which words drove the predictions\n" + explained.get("note", "No explanations."))]
    intro = (f"## Which words drove the predictions\nLayer Integrated Gradients over the input embeddings "
             f"({explained['n_steps']} steps; {explained['seconds_per_review']:.2f} s per review; largest "
             f"convergence delta {explained['max_abs_delta']:.4f}). Each word's background shows how much it "
             "pushed the prediction toward **positive** (green) or **negative** (red), relative to the review's "
             "strongest word; hover a word for its score (in logits). The scores of a review add up to its logit "
             "difference minus that of an empty review, within the delta.")
    parts = [Markdown(intro)]
    for kind, heading in (("error", "Most confident errors"), ("correct", "A sample of correct predictions")):
        chosen = [r for r in reviews if r["kind"] == kind]
        if not chosen:
            continue
        blocks = [f"### {heading}"]
        for i, r in enumerate(chosen, 1):
            top = ", ".join(f"{inert(w['text'])} {w['score']:+.2f}"
                            for w in sorted(r["words"], key=lambda w: -abs(w["score"]))[:3])
            # Raw HTML blocks: Markdown leaves their (inert) text alone instead of escaping its entities again.
            blocks.append(f"<div><b>{i}.</b> test row {r['row']}: true {NAMES.get(r['label'])}, predicted "
                          f"{NAMES.get(r['predicted'])} (p positive {r['probability_positive']:.3f}); delta "
                          f"{r['delta']:+.4f}; strongest: {top}</div>")
            blocks.append(heatmap_html(r))
        parts.append(Markdown("\n\n".join(blocks)))
    return parts
