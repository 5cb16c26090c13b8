"""The cards people look at (`python flows/<flow>.py card view <run>/<step>`): Metaflow card components built from
the results of steps/.

    training.py    the train step: epochs, per-step curves, out-of-memory back-offs, resumed epochs
    evaluation.py  the evaluate step: test metrics, the champion on the same rows, slices, plots, confident errors
    explanations.py  the evaluate step: this model beside the TF-IDF baseline, word heatmaps (HTML made inert)
    comparison.py  CompareFlow: the candidates' table, the accuracy-vs-latency plot, the command to train the best
    validation.py  the validate step: verdict, failed checks, expectations, quarantine, drift
    audit.py       PromoteFlow: the champion and the audit trail

Review texts are untrusted: they reach a card as table cells (rendered as text), shortened by `short`, or, in the
word heatmaps, as HTML whose every markup character is a character reference (explanations.inert).
"""
from __future__ import annotations


def fmt(value) -> str:
    """A metric for a table cell: 4 decimals, or thousands separators for large numbers."""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def percent(value) -> str:
    """A share as a percentage with one decimal ("" when unknown: a model logged before it was measured)."""
    return "" if value is None else f"{100 * float(value):.1f}%"


def one_decimal(value) -> str:
    return "" if value is None else f"{value:,.1f}"


def short(value, limit: int) -> str:
    """A cell's text on one line, at most `limit` characters (then "..."); missing values are empty."""
    import pandas as pd

    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):  # None, NaN, <NA>, NaT
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."
