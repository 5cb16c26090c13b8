"""The validate step's card: verdict and counts, failed checks, every expectation, quarantine, drift."""
from __future__ import annotations

from flowkit.cards import short
from schemas import LABEL_COLUMN, TEXT_COLUMN

QUARANTINE_SAMPLE_ROWS = 10
TEXT_CHARS = 80


def verdict(report, drift, fail_on_drift: bool) -> str:
    if not report.success:
        return "Data validation FAILED: the flow stops here"
    if drift is not None and drift.drifted:
        if fail_on_drift:
            return "Data validation passed, but the data drifted: the flow stops here (--fail-on-drift)"
        return "Data validation passed (warning: the data drifted from the champion's training data)"
    return "Data validation passed"


def validation_card(report, drift, mlflow_run_id: str, fail_on_drift: bool = False) -> list:
    """Card components (metaflow.cards) for a ValidationReport and a DriftReport (None when not checked)."""
    from metaflow.cards import JSONViewer, Markdown, Table

    metrics = report.metrics()
    parts = [
        Markdown(f"# {verdict(report, drift, fail_on_drift)}"),
        Markdown(f"**{metrics['rows_in']}** rows in, **{metrics['rows_clean']}** clean, "
                 f"**{metrics['rows_quarantined']}** quarantined ({metrics['bad_fraction']:.2%} of rows; "
                 f"fatal above {report.max_bad_fraction:.1%}, `--max-bad-fraction`). "
                 f"{metrics['expectations_failed']} of {metrics['expectations_evaluated']} expectations failed."),
    ]
    if report.failures:
        parts.append(Markdown("## Fatal problems"))
        parts.append(Table(
            [[f.get("column") or "(table)", f["problem"], f["expectation"], short(f["observed"], 160),
              "; ".join(short(e, 60) for e in f.get("examples", []))] for f in report.failures],
            headers=["column", "problem", "expectation", "observed", "examples"]))
    parts.append(Markdown("## Expectations (schemas/reviews_suite.json)"))
    parts.append(Table(
        [[r["expectation"], r["column"], r["level"], "pass" if r["success"] else "FAIL", r["observed"]]
         for r in report.expectation_rows()],
        headers=["expectation", "column", "level", "result", "observed"]))
    if report.quarantined:
        counts = {reason: n for reason, n in report.reason_counts().items() if n}
        parts.append(Markdown(f"## Quarantine: {report.quarantined} rows"))
        parts.append(Table([[reason, n] for reason, n in counts.items()], headers=["reason", "rows"]))
        sample = report.quarantine.head(QUARANTINE_SAMPLE_ROWS)
        parts.append(Table(
            [[short(r.source_file, 60), int(r.source_row), r.reason, short(getattr(r, TEXT_COLUMN), TEXT_CHARS),
              short(getattr(r, LABEL_COLUMN), 8)]
             for r in sample.itertuples()],
            headers=["file", "row", "reason", TEXT_COLUMN, LABEL_COLUMN]))
    parts.append(Markdown("## Drift against the champion's training data"))
    if drift is None:
        parts.append(Markdown("Not checked: the data did not pass validation."))
    elif not drift.features:
        parts.append(Markdown("Skipped: " + "; ".join(drift.notes)))
    else:
        parts.append(Markdown(f"Champion version {drift.champion_version}: **{drift.status}** "
                              "(PSI below 0.1 stable, 0.1 to 0.25 moderate, 0.25 or more drift)."))
        parts.append(Table([[f["name"], f"{f['psi']:.3f}", f["level"], f["reference"], f["new"]]
                            for f in drift.features],
                           headers=["feature", "PSI", "level", "training data", "new data"]))
        if drift.notes:
            parts.append(Markdown("Notes: " + "; ".join(drift.notes)))
    parts.append(Markdown("## Great Expectations validation result"))
    parts.append(JSONViewer(report.gx_result, collapsible=True, max_height="480px",
                            title="validation/gx_result.json (long values trimmed)"))
    parts.append(Markdown(
        f"The same result rendered as GX Data Docs, the quarantined rows and the drift figures are artifacts of "
        f"MLflow run `{mlflow_run_id}` (the `validate` step run): `validation/data_docs/index.html`, "
        "`validation/gx_result.json`, `validation/quarantine.csv`, `validation/drift.json`."))
    return parts
