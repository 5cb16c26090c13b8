"""Validate: run the Great Expectations suite from schemas/ on canonical rows; verdict, report, quarantine.

Each expectation in the suite carries `meta.level`:
- "table": a failure is fatal (no rows, a missing column, labels outside the contract, one class, a text
  column of bare numbers) and stops the flow before split;
- "row": failing rows are quarantined with the expectation's `meta.reason`, unless more than
  `max_bad_fraction` of all rows fail, which is fatal too (the file is probably not what the user thinks).
Records ingest could not map (a repeated header line) join the quarantine with their own reason.

The suite's shared values come from the contract (schemas.suite_parameters()); the one derived column it
checks, `labelConflict`, is computed here: true on every row whose exact text also occurs with the other label.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas import LABEL_COLUMN, TEXT_COLUMN, canonical_columns, load_contract, load_suite, suite_parameters
from steps.runtime.errors import ReviewflowError

EXAMPLES_PER_FAILURE = 3
EXCERPT_CHARS = 80
STORED_LIST_ITEMS = 20  # unexpected values kept per expectation in the stored GX result and Data Docs
STORED_STRING_CHARS = 300
ROW_REASONS = ("repeated_header", "missing_label", "missing_text", "blank_text", "text_too_long",
               "conflicting_labels")
LABEL_CONFLICT = "labelConflict"


@dataclass
class ValidationReport:
    success: bool
    rows_in: int  # canonical rows plus records ingest set aside
    clean: object  # DataFrame of canonical rows that passed
    quarantine: object  # DataFrame: source_file, source_row, reason, then the row's canonical columns
    max_bad_fraction: float = 0.05
    failures: list[dict] = field(default_factory=list)  # fatal problems, one dict per failed check
    gx_result: dict = field(default_factory=dict)  # the GX validation result, JSON form (long values trimmed)
    docs_index: str | None = None  # the Data Docs site's index.html, when it was built
    clean_rows: object = None  # np.ndarray: positions of the clean rows in the validated frame (clean = rows_of)

    @property
    def quarantined(self) -> int:
        return len(self.quarantine)

    def reason_counts(self) -> dict[str, int]:
        """Quarantined rows per reason (a row failing two checks counts under both)."""
        counts = {reason: 0 for reason in ROW_REASONS}
        for reasons in self.quarantine["reason"] if len(self.quarantine) else []:
            for reason in str(reasons).split(";"):
                counts[reason.strip()] = counts.get(reason.strip(), 0) + 1
        return counts

    def metrics(self) -> dict:
        results = self.gx_result.get("results", [])
        return {
            "rows_in": self.rows_in,
            "rows_clean": len(self.clean),
            "rows_quarantined": self.quarantined,
            "bad_fraction": round(self.quarantined / self.rows_in, 6) if self.rows_in else 0.0,
            "max_bad_fraction": self.max_bad_fraction,
            "expectations_evaluated": len(results),
            "expectations_failed": sum(1 for r in results if not r["success"]),
            "validation_passed": int(self.success),
            **{f"quarantined_{reason}": n for reason, n in self.reason_counts().items()},
        }

    def error_message(self, source: str) -> str:
        lines = [f"{source}: validation failed; nothing was trained or registered. "
                 f"{len(self.failures)} problem(s):"]
        for number, failure in enumerate(self.failures, start=1):
            where = f"column '{failure['column']}'" if failure.get("column") else "table"
            lines.append(f"  {number}. {where}: {failure['problem']}")
            lines.append(f"     [{failure['expectation']}; observed: {failure['observed']}]")
            for example in failure.get("examples", []):
                lines.append(f"     e.g. {example}")
        lines.append(
            "Fix the data or the options that map it (--text-column, --label-column, --positive-values, "
            "--positive-if), or raise --max-bad-fraction for row problems. The full report is in the validate "
            "step's MLflow artifacts: validation/gx_result.json and validation/data_docs/index.html."
        )
        return "\n".join(lines)

    def expectation_rows(self) -> list[dict]:
        """One plain row per evaluated expectation, for cards and summaries."""
        rows = []
        for result in self.gx_result.get("results", []):
            config = result["expectation_config"]
            meta = config.get("meta") or {}
            outcome = result.get("result") or {}
            observed = outcome.get("observed_value")
            if observed is None and "unexpected_count" in outcome:
                observed = f"{outcome['unexpected_count']} unexpected"
            rows.append({
                "expectation": config["type"],
                "column": config["kwargs"].get("column") or "",
                "level": meta.get("level", "table"),
                "success": bool(result["success"]),
                "observed": _excerpt(observed if observed is not None else ""),
            })
        return sorted(rows, key=lambda r: (r["success"], r["level"], r["column"], r["expectation"]))


def _excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _trim(value):
    """A JSON value with long strings and lists shortened (what gets stored and rendered)."""
    if isinstance(value, str):
        return value if len(value) <= STORED_STRING_CHARS else f"{value[:STORED_STRING_CHARS]}... ({len(value)} chars)"
    if isinstance(value, list):
        return [_trim(v) for v in value[:STORED_LIST_ITEMS]] + (
            [f"... {len(value) - STORED_LIST_ITEMS} more"] if len(value) > STORED_LIST_ITEMS else [])
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items()}
    return value


def suite_columns() -> list[str]:
    """The canonical columns the suite's expectations name (derived columns excluded)."""
    named = {e["kwargs"]["column"] for e in load_suite()["expectations"] if "column" in e["kwargs"]}
    return [c for c in canonical_columns() if c in named]


def label_conflicts(frame, chunk_rows: int = 100_000):
    """Boolean Series: the row's exact, non-blank reviewText also occurs with a different non-null label.

    Texts are compared by 64-bit hash first (computed a chunk at a time, so a million texts never become a
    million Python objects at once), and only rows whose hash repeats are compared as strings.
    """
    import numpy as np
    import pandas as pd

    contract = load_contract()
    text, label = contract["text_column"], contract["label_column"]
    conflict = pd.Series(False, index=frame.index)
    if text not in frame.columns or label not in frame.columns or not len(frame):
        return conflict
    usable = (frame[text].notna() & frame[label].notna()).to_numpy(dtype=bool)
    hashes = np.zeros(len(frame), dtype=np.uint64)
    for start in range(0, len(frame), chunk_rows):
        hashes[start:start + chunk_rows] = pd.util.hash_pandas_object(
            frame[text].iloc[start:start + chunk_rows], index=False).to_numpy()
    candidates = np.flatnonzero(usable)
    candidates = candidates[pd.Series(hashes[candidates]).duplicated(keep=False).to_numpy()]
    if not len(candidates):
        return conflict
    repeated = frame.iloc[candidates][[text, label]]
    repeated = repeated[(repeated[text].str.strip() != "").fillna(False)]  # blank texts: blank_text, not conflicts
    labels_per_text = repeated.groupby(text, observed=True)[label].transform("nunique")
    conflict.iloc[np.flatnonzero(frame.index.isin(labels_per_text.index[labels_per_text > 1]))] = True
    return conflict


def _run_suite(frame, docs_dir: str | None = None) -> tuple[dict, dict[int, list[int]], str | None]:
    """Run the suite on `frame`: (GX result as JSON with long values trimmed, row indexes per result, docs index)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from steps.data.gx_internals import skip_batch_hashing

    skip_batch_hashing()  # a batch hash nobody reads costs ~2 s per million reviews
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if docs_dir:
        context.add_data_docs_site(site_name="reviewflow", site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    suite = context.suites.add(gx.ExpectationSuite(**load_suite()))
    batch_definition = (
        context.data_sources.add_pandas("reviews")
        .add_dataframe_asset("reviews")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="reviews", data=batch_definition, suite=suite))
    result = validation.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=suite_parameters(),
        result_format={"result_format": "COMPLETE", "partial_unexpected_count": EXAMPLES_PER_FAILURE},
    )
    indexes = {}
    for position, expectation_result in enumerate(result.results):
        indexes[position] = [int(i) for i in (expectation_result.result.get("unexpected_index_list") or [])]
        expectation_result.result = _trim(json.loads(json.dumps(expectation_result.result, default=str)))
    docs_index = None
    if docs_dir:
        store = context.validation_results_store
        for key in store.list_keys():  # store the trimmed result, so Data Docs render no 5 MB review
            store.set(key, result)
        docs_index = context.build_data_docs(site_names=["reviewflow"])["reviewflow"].removeprefix("file://")
    return json.loads(json.dumps(result.to_json_dict(), default=str)), indexes, docs_index


def _locate(origin, position: int, frame) -> str:
    where = f"{origin['source_file'].iloc[position]} row {origin['source_row'].iloc[position]}"
    text = frame[TEXT_COLUMN].iloc[position] if TEXT_COLUMN in frame.columns else None
    return f"{where}: {_excerpt(text, 60)!r}" if text is not None and text == text else where


def _failure(result: dict, indexes: list[int], frame, origin) -> dict:
    config = result["expectation_config"]
    meta = config.get("meta") or {}
    outcome = result.get("result") or {}
    column = config["kwargs"].get("column")
    observed = outcome.get("observed_value")
    if observed is None and "unexpected_count" in outcome:
        observed = f"{outcome['unexpected_count']} of {outcome.get('element_count', len(frame))} rows"
        if outcome.get("partial_unexpected_list"):
            observed += f", values such as {[_excerpt(v, 40) for v in outcome['partial_unexpected_list'][:5]]}"
    if observed is None and column in frame.columns:  # e.g. distinct values of a column with one class
        observed = f"distinct values {sorted(str(v) for v in frame[column].dropna().unique()[:10])}"
    if result.get("exception_info", {}).get("raised_exception"):
        observed = result["exception_info"]["exception_message"]
    return {
        "expectation": config["type"],
        "column": column,
        "level": meta.get("level", "table"),
        "problem": meta.get("problem") or meta.get("reason") or config["type"],
        "observed": observed,
        "examples": [_locate(origin, i, frame) for i in indexes[:EXAMPLES_PER_FAILURE]],
    }


def rows_of(frame, positions):
    """The rows of a canonical frame at `positions`, as the steps after validate use them: renumbered from 0, the
    label as int64 where none is missing. ReviewFlow stores the frame once (ingest) and positions after it (the
    clean rows, each split), so the datastore holds the reviews once: `rows_of(reviews, split_rows["test"])`."""
    frame = frame.iloc[positions].reset_index(drop=True)
    if len(frame) and LABEL_COLUMN in frame and not frame[LABEL_COLUMN].isna().any():
        frame[LABEL_COLUMN] = frame[LABEL_COLUMN].astype("int64")
    return frame


def stored_split(artifacts, name: str):
    """The rows of split `name` (train, validation, test) of a ReviewFlow run, from its artifacts: a Metaflow
    task's `.data`, or the flow itself inside a step. A run from before the reviews were stored once kept each
    split as a frame of its own (`<name>_rows`), so PromoteFlow and `resume` still read those."""
    positions = getattr(artifacts, "split_rows", None)
    if positions is None:
        return getattr(artifacts, f"{name}_rows")
    return rows_of(artifacts.reviews, positions[name])


def validate_reviews(frame, max_bad_fraction: float = 0.05, origin=None, rejected=None,
                     docs_dir: str | None = None) -> ValidationReport:
    """Validate canonical rows against the suite; quarantine failing rows; decide the verdict.

    origin: DataFrame aligned with `frame` (source_file, source_row) from ingest; without it rows are
    numbered 1.. in frame order. rejected: records ingest set aside (source_file, source_row, reason, ...).
    docs_dir: build the GX Data Docs site there.
    """
    import numpy as np
    import pandas as pd

    if not 0 <= max_bad_fraction < 1:
        raise ReviewflowError(f"--max-bad-fraction must be at least 0 and below 1, got {max_bad_fraction}")
    frame = frame.reset_index(drop=True)
    if origin is None:
        origin = pd.DataFrame({"source_file": "<frame>", "source_row": range(1, len(frame) + 1)})
    origin = origin.reset_index(drop=True)
    if len(origin) != len(frame):
        raise ValueError(f"origin has {len(origin)} rows for {len(frame)} canonical rows")
    rejected = rejected if rejected is not None else pd.DataFrame(columns=["source_file", "source_row", "reason"])

    # GX gets only the columns the suite checks: it copies the rows of its batch for column checks.
    checked = [c for c in suite_columns() if c in frame.columns]
    batch = frame[checked].assign(**{LABEL_CONFLICT: label_conflicts(frame).to_numpy()})
    gx_result, indexes, docs_index = _run_suite(batch, docs_dir)

    failures: list[dict] = []
    reasons: dict[int, list[str]] = {}
    for position, result in enumerate(gx_result["results"]):  # GX does not keep the suite's order
        if result["success"]:
            continue
        meta = result["expectation_config"].get("meta") or {}
        rows = indexes.get(position, [])
        if meta.get("level") == "row" and rows:
            for row in rows:
                reasons.setdefault(row, []).append(meta.get("reason", result["expectation_config"]["type"]))
        else:
            failures.append(_failure(result, rows, frame, origin))

    bad = sorted(reasons)
    quarantine = pd.concat([origin.iloc[bad].reset_index(drop=True).astype({"source_file": "string"}),
                            pd.DataFrame({"reason": ["; ".join(reasons[i]) for i in bad]}),
                            frame.iloc[bad].reset_index(drop=True)], axis=1)
    if len(rejected):
        set_aside = rejected.astype({"source_file": "string", TEXT_COLUMN: "string"}).assign(
            **{LABEL_COLUMN: pd.array([pd.NA] * len(rejected), dtype="Int64")})
        quarantine = pd.concat([set_aside[["source_file", "source_row", "reason", TEXT_COLUMN, LABEL_COLUMN]],
                                quarantine], ignore_index=True)
    rows_in = len(frame) + len(rejected)
    if rows_in and len(quarantine) > max_bad_fraction * rows_in:
        counts = quarantine["reason"].str.split("; ").explode().value_counts().to_dict()
        failures.append({
            "expectation": "row checks (blank or missing text, missing label, over-long text, conflicting labels)",
            "column": None,
            "level": "table",
            "problem": f"more than {max_bad_fraction:.1%} of rows fail row checks (--max-bad-fraction "
                       f"{max_bad_fraction}): the file is probably not what it should be",
            "observed": f"{len(quarantine)} of {rows_in} rows ({len(quarantine) / rows_in:.1%}): "
                        + ", ".join(f"{reason} {n}" for reason, n in counts.items()),
            "examples": [f"{row.source_file} row {row.source_row} ({row.reason}): "
                         f"{_excerpt(getattr(row, TEXT_COLUMN), 60)!r}"
                         for row in quarantine.head(EXAMPLES_PER_FAILURE).itertuples()],
        })
    clean_rows = np.setdiff1d(np.arange(len(frame)), np.asarray(bad, dtype=np.int64))
    clean = rows_of(frame, clean_rows)

    if not failures:
        # Quarantine can remove a whole class; the clean rows must still be trainable.
        classes = set(clean[LABEL_COLUMN].dropna().astype(int).unique()) if len(clean) else set()
        if classes != {0, 1}:
            failures.append({
                "expectation": "both classes present after quarantine",
                "column": LABEL_COLUMN,
                "level": "table",
                "problem": "only one class is left once bad rows are quarantined",
                "observed": f"classes {sorted(classes)} in {len(clean)} clean rows",
                "examples": [],
            })
    return ValidationReport(
        success=not failures,
        rows_in=rows_in,
        clean=clean,
        clean_rows=clean_rows,
        quarantine=quarantine,
        max_bad_fraction=max_bad_fraction,
        failures=failures,
        gx_result=gx_result,
        docs_index=docs_index,
    )


def require_valid(report: ValidationReport, source: str) -> None:
    """Raise the one clear error that lists every failed check, if the data did not pass."""
    if not report.success:
        raise ReviewflowError(report.error_message(source))


def log_validation(run, report: ValidationReport) -> None:
    """Log the report to the validate step's MLflow run: metrics, GX result, quarantine CSV, Data Docs."""
    from pathlib import Path

    run.metrics(report.metrics())
    run.json(report.gx_result, "validation/gx_result.json")
    if report.quarantined:
        run.frame(report.quarantine, "validation/quarantine.csv")
    if report.docs_index:
        run.client.log_artifacts(run.run_id, str(Path(report.docs_index).parent), "validation/data_docs")
    run.tags({"validation": "passed" if report.success else "failed"})


def run_data_checks(run, frame, origin, rejected, max_bad_fraction: float, registered_model: str, seed: int = 0,
                    load_tokenizer=None):
    """The validate step: validate, log the report (GX result, Data Docs, quarantine), and, when the data
    passed, compare it with the champion's training profile and log the drift figures.

    load_tokenizer: name -> tokenizer, for the token features of the drift check (the caller's, so that this data
    layer does not import the models'; without it those features are skipped and the report says so).

    Returns (ValidationReport, DriftReport or None); raises nothing for bad data, so the caller can show the
    report first and then call require_valid / require_no_drift.
    """
    import tempfile

    from steps.data.drift import check_drift, log_drift

    with tempfile.TemporaryDirectory(prefix="reviewflow-data-docs-") as docs_dir:
        report = validate_reviews(frame, max_bad_fraction, origin, rejected, docs_dir)
        log_validation(run, report)
    report.docs_index = None  # the site now lives in MLflow (validation/data_docs), not in the removed folder
    if not report.success:
        return report, None
    drift = check_drift(run.client, registered_model, report.clean, load_tokenizer, seed)
    log_drift(run, drift)
    return report, drift
