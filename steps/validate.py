"""Validate: run the Great Expectations suite from schemas/ on canonical rows; verdict, report, quarantine.

Each expectation in the suite carries `meta.level`:
- "table": a failure is fatal (empty data, a missing class, ...) and stops the flow before split;
- "row": failing rows are quarantined with a reason, unless more than `max_bad_fraction` of all rows fail,
  which is fatal too (the file is probably not what the user thinks it is).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas import load_suite
from steps.errors import ReviewflowError

EXAMPLES_PER_FAILURE = 3


@dataclass
class ValidationReport:
    success: bool
    rows_in: int
    clean: "object"  # DataFrame of rows that passed
    quarantine: "object"  # DataFrame of rows that failed row checks, with a `reason` column
    failures: list[dict] = field(default_factory=list)  # fatal problems, one dict per failed expectation
    gx_result: dict = field(default_factory=dict)  # the GX validation result, JSON form

    @property
    def quarantined(self) -> int:
        return len(self.quarantine)

    def metrics(self) -> dict:
        return {
            "rows_in": self.rows_in,
            "rows_clean": len(self.clean),
            "rows_quarantined": self.quarantined,
            "expectations_evaluated": len(self.gx_result.get("results", [])),
            "expectations_failed": sum(1 for r in self.gx_result.get("results", []) if not r["success"]),
        }

    def error_message(self, source: str) -> str:
        lines = [f"{source}: validation failed, nothing was trained or registered:"]
        for failure in self.failures:
            where = f"column '{failure['column']}'" if failure.get("column") else "table"
            line = f"  - {where}: {failure['expectation']} (observed: {failure['observed']})"
            if failure.get("examples"):
                line += f"; e.g. rows {failure['examples']}"
            lines.append(line)
        return "\n".join(lines)


def _run_suite(frame, suite_dict: dict) -> dict:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    suite = context.suites.add(gx.ExpectationSuite(**suite_dict))
    batch = (
        context.data_sources.add_pandas("reviews")
        .add_dataframe_asset("reviews")
        .add_batch_definition_whole_dataframe("all_rows")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 5})
    return json.loads(json.dumps(result.to_json_dict(), default=str))


def _describe(result: dict, frame, examples: list[int] | None = None) -> dict:
    config = result["expectation_config"]
    observed = result["result"].get("observed_value")
    if observed is None and "unexpected_count" in result["result"]:
        observed = f"{result['result']['unexpected_count']} unexpected values"
    failure = {
        "expectation": config["type"],
        "column": config["kwargs"].get("column"),
        "observed": observed,
        "examples": examples or [],
    }
    if result.get("exception_info", {}).get("raised_exception"):
        failure["observed"] = result["exception_info"]["exception_message"]
    return failure


def validate_reviews(frame, max_bad_fraction: float = 0.05) -> ValidationReport:
    """Validate canonical rows against the suite; quarantine failing rows; decide the verdict."""
    import pandas as pd

    frame = frame.reset_index(drop=True)
    gx_result = _run_suite(frame, load_suite())

    failures: list[dict] = []
    reasons: dict[int, list[str]] = {}
    for result in gx_result["results"]:  # GX does not keep the suite's order; each result carries its meta
        if result["success"]:
            continue
        level = (result["expectation_config"].get("meta") or {}).get("level", "table")
        indexes = result["result"].get("unexpected_index_list") or []
        if level == "row" and indexes:
            reason = f"{result['expectation_config']['type']}({result['expectation_config']['kwargs'].get('column')})"
            for index in indexes:
                reasons.setdefault(int(index), []).append(reason)
        else:
            failures.append(_describe(result, frame, [int(i) for i in indexes[:EXAMPLES_PER_FAILURE]]))

    bad = sorted(reasons)
    if frame.shape[0] and len(bad) > max_bad_fraction * frame.shape[0]:
        failures.append({
            "expectation": f"at most {max_bad_fraction:.1%} of rows fail row checks (--max-bad-fraction)",
            "column": None,
            "observed": f"{len(bad)} of {len(frame)} rows ({len(bad) / len(frame):.1%})",
            "examples": bad[:EXAMPLES_PER_FAILURE],
        })
    quarantine = frame.loc[bad].copy()
    quarantine.insert(0, "reason", ["; ".join(reasons[i]) for i in bad])
    quarantine.insert(0, "row", bad)
    clean = frame.drop(index=bad).reset_index(drop=True)

    if not failures:
        # Quarantine can remove a whole class; the clean rows must still be trainable.
        classes = set(clean["isPositive"].dropna().astype(int).unique()) if len(clean) else set()
        if classes != {0, 1}:
            failures.append({
                "expectation": "both classes present after quarantine",
                "column": "isPositive",
                "observed": f"classes {sorted(classes)} in {len(clean)} clean rows",
                "examples": [],
            })
    if len(clean):
        clean["isPositive"] = clean["isPositive"].astype("int64")
    return ValidationReport(
        success=not failures,
        rows_in=len(frame),
        clean=clean,
        quarantine=quarantine.reset_index(drop=True),
        failures=failures,
        gx_result=gx_result,
    )


def require_valid(report: ValidationReport, source: str) -> None:
    """Raise the one clear error that lists every failed check, if the data did not pass."""
    if not report.success:
        raise ReviewflowError(report.error_message(source))
