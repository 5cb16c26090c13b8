"""The data steps a flow shares with ReviewFlow's (CompareFlow, TuneFlow): read the reviews and check them the same
way, with the same options, each in its nested MLflow step run. The flows call these from their own steps and
keep what they return as artifacts."""
from __future__ import annotations

from flowkit.step_runs import step_run


def ingest_step(flow):
    """Read the reviews of `flow.data` (the data options): the ingest result (frame, origin, rejects, fingerprint)."""
    from steps.data.ingest import ingest_reviews
    from steps.data.mapping import IngestOptions

    with step_run(flow, "ingest") as run:
        options = IngestOptions.from_parameters(flow.text_column, flow.label_column, flow.positive_values,
                                                flow.negative_values, flow.positive_if, flow.encoding)
        return ingest_reviews(run, flow.mlflow_run_id, flow.data, flow.max_rows, flow.seed, options)


def validate_step(flow):
    """Check the ingested reviews against the contract (rows quarantined, the run stopped past
    --max-bad-fraction): the validation report."""
    from steps.data.validate import log_validation, require_valid, validate_reviews

    with step_run(flow, "validate") as run:
        report = validate_reviews(flow.reviews, flow.max_bad_fraction, flow.review_origin, flow.ingest_rejects)
        log_validation(run, report)
        require_valid(report, flow.data)
    print(f"Validation passed: {len(report.clean)} clean rows, {report.quarantined} quarantined.")
    return report
