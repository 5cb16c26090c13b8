"""What a person reads at the end of a run: one compact table with what happened, where everything is, what next.

A plain aligned table, not `rich`: a Metaflow step's stdout is a pipe whose lines Metaflow prefixes (and strips
of leading spaces), so colours and redrawing would not survive, and plain text reads well in CI logs and cron mail.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

LOWER_IS_BETTER = ("log_loss", "ece")
LABEL_WIDTH = 10
MLFLOW_UI_PORT = 5000


@dataclass
class RunReport:
    metaflow_run: str  # ReviewFlow/<run id>
    flow_file: str  # as a user types it to run the flow again, e.g. flows/review_flow.py
    tracking_uri: str
    mlflow_run_id: str
    datastore: str  # Metaflow's datastore root: a directory or an s3:// URI
    validation: dict  # steps.data.validate.ValidationReport.metrics()
    retrain_reason: str = ""
    split_sizes: dict | None = None
    test_metrics: dict | None = None
    comparison: dict | None = None  # steps.evaluation.metrics.compare_with_champion()
    registration: dict | None = None  # steps.lifecycle.registry.Registration as a dict
    champion_before: int | None = None  # the champion version when this run evaluated (None: there was none)
    mlflow_runs: dict = field(default_factory=dict)  # step name -> {"run_id", "artifact_uri"}; "" = the parent
    experiment_id: str | None = None
    card_steps: tuple = ("validate", "train", "evaluate")
    registered_model: str = "review-classifier"  # --registered-model: the production name the branch derives from
    branch: str | None = None  # the @project branch (prod, user.alice, test.x)
    served: dict | None = None  # the served model: backend and why (steps.serving.package.ServedModel as a dict)
    baseline: dict | None = None  # steps.evaluation.baseline.BaselineResult.summary(), same test rows
    model_choice: dict | None = None  # steps.training.auto_model.ModelChoice as a dict, plus the epochs trained

    @property
    def run_id(self) -> str:
        return self.metaflow_run.split("/", 1)[1]

    def lines(self) -> list[str]:
        return summary_lines(self) if self.registration else unchanged_lines(self)


def script(path: str | os.PathLike) -> str:
    """A flow file as a user would type it: relative to the current directory when below it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def mlflow_runs(tracking_uri: str, parent_run_id: str) -> tuple[str, dict]:
    """The experiment id and {step name: {"run_id", "artifact_uri"}} of a flow run's MLflow runs ("" = parent)."""
    from steps.runtime.tracking import client

    mlflow_client = client(tracking_uri)
    parent = mlflow_client.get_run(parent_run_id)
    experiment = parent.info.experiment_id
    runs = {"": {"run_id": parent_run_id, "artifact_uri": parent.info.artifact_uri}}
    children = mlflow_client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    # After a @retry or a resume a step has several runs (FAILED, KILLED, then FINISHED): name the newest
    # finished one, which holds the step's artifacts; a step with no finished run, its newest attempt.
    for child in sorted(children, key=lambda r: (r.info.status == "FINISHED", r.info.start_time)):
        runs[child.info.run_name] = {"run_id": child.info.run_id, "artifact_uri": child.info.artifact_uri}
    return experiment, runs


def _rows(label: str, lines: list[str]) -> list[str]:
    """`| label      | text` lines. The leading bar keeps continuation lines aligned: Metaflow strips the leading
    spaces of every line a step prints."""
    return [f"| {(label if i == 0 else ''):<{LABEL_WIDTH}} | {line}".rstrip() for i, line in enumerate(lines)]


def _number(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def data_lines(report: RunReport) -> list[str]:
    v = report.validation
    line = (f"{v.get('rows_in', 0):,} rows in, {v.get('rows_quarantined', 0):,} quarantined "
            f"({v.get('bad_fraction', 0.0):.1%}), {v.get('rows_clean', 0):,} clean")
    lines = [line]
    if report.split_sizes:
        lines.append("split " + " / ".join(f"{name} {n:,}" for name, n in report.split_sizes.items()))
    return lines


def metric_lines(test_metrics: dict, comparison: dict | None) -> list[str]:
    """Test metrics, and beside them the champion's on the same rows and the difference, one metric a line."""
    from steps.evaluation.metrics import COMPARED, interval_line

    interval = [line] if (line := interval_line(test_metrics)) else []
    if not comparison:
        return [f"test accuracy {_number(test_metrics['accuracy'])}   F1 {_number(test_metrics['f1'])}   "
                f"ROC-AUC {_number(test_metrics['roc_auc'])}   ECE {_number(test_metrics['ece'])}", *interval,
                f"({test_metrics['rows']} test reviews; no champion to compare with)"]
    champion = f"champion v{comparison['champion_version']}"
    lines = [f"{'test metric':<12}{'this model':>11}{champion:>{max(14, len(champion) + 3)}}{'delta':>10}"]
    for name in COMPARED:
        delta = comparison["delta"][name]
        better = (delta < 0) if name in LOWER_IS_BETTER else (delta > 0)
        mark = "" if abs(delta) < 5e-5 else ("  better" if better else "  worse")
        lines.append(f"{name:<12}{_number(test_metrics[name]):>11}"
                     f"{_number(comparison['champion'][name]):>{max(14, len(champion) + 3)}}{delta:>+10.4f}{mark}")
    p = comparison["mcnemar"]["p_value"]
    lines += interval
    lines.append(f"({test_metrics['rows']} test reviews; McNemar exact p = {p:.3g}: "
                 f"{'a real difference' if p < 0.05 else 'no significant difference'} at 5%)")
    return lines


def baseline_lines(test_metrics: dict, baseline: dict) -> list[str]:
    """The TF-IDF baseline's test metrics beside this model's, and where the baseline model is."""
    b = baseline["metrics"]
    lines = [f"{baseline['description']}: accuracy {_number(b['accuracy'])}   F1 {_number(b['f1'])}   "
             f"ROC-AUC {_number(b['roc_auc'])}   (this model: F1 {test_metrics['f1'] - b['f1']:+.4f})"]
    if baseline.get("model_uri"):
        lines.append(f"model: {baseline['model_uri']}   (PredictFlow --model-uri takes it)")
    return lines


def mlflow_lines(report: RunReport) -> list[str]:
    uri, run = report.tracking_uri, report.mlflow_run_id
    lines = [f"run {run} in {uri}"]
    base = None
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
    elif uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        base = f"http://127.0.0.1:{MLFLOW_UI_PORT}"
        lines.append(f"browse: mlflow ui --backend-store-uri {shlex.quote(uri)} --port {MLFLOW_UI_PORT}, then open")
    if base:
        if report.experiment_id:
            lines.append(f"  {base}/#/experiments/{report.experiment_id}/runs/{run}")
        if report.registration:
            name, version = report.registration["name"], report.registration["version"]
            lines.append(f"  {base}/#/models/{name}/versions/{version}")
    return lines


def card_lines(report: RunReport) -> list[str]:
    runner = f"python {report.flow_file}"
    steps = [s for s in report.card_steps if report.test_metrics is not None or s == "validate"]
    lines = [f"{runner} card view {report.run_id}/{step}" for step in steps[:1]]
    if len(steps) > 1:
        lines.append(f"  (and {', '.join(f'{report.run_id}/{s}' for s in steps[1:])}; `card get` writes the HTML)")
    return lines


def artifact_lines(report: RunReport) -> list[str]:
    lines = [f"Metaflow: {report.datastore.rstrip('/')}/{report.metaflow_run}   "
             f"(Run('{report.metaflow_run}').data in Python)"]
    labels = {"validate": "validation/ (GX data docs, quarantine.csv)", "train": "plots/ (training curves)",
              "evaluate": "plots/, evaluation/evaluation.json, explanations/, baseline/ (TF-IDF model)",
              "register": "the logged model"}
    for step, what in labels.items():
        found = report.mlflow_runs.get(step)
        if found:
            lines.append(f"MLflow {step}: {found['artifact_uri']}   {what}")
    return lines


def next_lines(report: RunReport) -> list[str]:
    """The exact PromoteFlow commands that make sense now (on this run's branch, and into production)."""
    from steps.lifecycle.environments import PRODUCTION_BRANCH
    from steps.settings import DEFAULT_REGISTERED_MODEL

    registration = report.registration
    promote = f"python {shlex.quote(str(Path(report.flow_file).with_name('promote_flow.py')))} run"
    name, base = registration["name"], report.registered_model
    suffix = "" if base == DEFAULT_REGISTERED_MODEL else f" --registered-model {shlex.quote(base)}"
    version, before = registration["version"], report.champion_before
    back = ([f"roll back: {promote} --rollback --reason 'why'{suffix}   (champion back to v{before})"]
            if before is not None and before != version else [])
    history = [f"history:   {promote} --history{suffix}"]
    production = []
    if report.branch and report.branch != PRODUCTION_BRANCH:
        into = promote.replace(" run", " --production run")
        production = [f"to prod:   {into} --source models:/{name}/{version} --reason 'why'{suffix}"]
    if "champion" in registration.get("aliases", []):
        return back + history + production
    if registration.get("gate") == "passed":  # --promote never
        return [f"promote:   {promote} --version {version} --reason 'why'{suffix}"] + history + production
    return [f"re-check:  {promote} --version {version}{suffix}   (the gate again, on this run's test rows)",
            f"force:     {promote} --version {version} --force --reason 'why'{suffix}"] + history


def served_scorecard(served: dict) -> list[str]:
    """What each backend scored on the test rows (accuracy/F1), and why a refused one was refused: no point is lost
    to serving without the summary saying so."""
    from steps.serving.package import ServedModel

    line = ServedModel(**{"model_uri": "", "model_id": "", **served}).scorecard()
    return [line] if line else []


def headline(report: RunReport) -> str:
    registration = report.registration
    if registration is None:
        return f"=== {report.metaflow_run} finished: nothing to retrain ==="
    name, version = registration["name"], registration["version"]
    status = "now champion" if "champion" in registration.get("aliases", []) else "challenger, champion unchanged"
    return f"=== {report.metaflow_run} finished: {name} v{version} registered, {status} ==="


def model_lines(report: RunReport) -> list[str]:
    """What was (or would have been) trained, and why: `--model auto` says what it saw."""
    choice = report.model_choice
    if not choice:
        return []
    epochs = f", {choice['epochs']} epoch(s)" if choice.get("epochs") else ""
    machine = f" [{choice['machine']}]" if choice.get("machine") else ""
    return [f"{choice['model']}{epochs} ({choice['why']}){machine}"]


def summary_lines(report: RunReport) -> list[str]:
    """The end-of-run summary of a run that trained and registered a model."""
    registration = report.registration
    name, version = registration["name"], registration["version"]
    aliases = ", ".join(registration.get("aliases", [])) or "none"
    registered = f"models:/{name}/{version}  aliases: {aliases}" + (
        "" if registration.get("created", True) else "  (found from an earlier attempt; not duplicated)")
    lines = ["", headline(report)]
    lines += _rows("data", data_lines(report))
    lines += _rows("model", model_lines(report))
    lines += _rows("test", metric_lines(report.test_metrics, report.comparison))
    if report.baseline:
        lines += _rows("baseline", baseline_lines(report.test_metrics, report.baseline))
    if registration.get("gate"):
        lines += _rows("gate", [f"promotion gate: {registration['gate']} "
                                f"({'; '.join(registration.get('gate_reasons', []))})"])
    loaded = f"{name}@champion" if "champion" in registration.get("aliases", []) else f"{name}/{version}"
    served = ([f"served by {report.served['backend']}: {report.served['chose']}", *served_scorecard(report.served)]
              if report.served else [])
    lines += _rows("registered", [registered, *served, f"load: mlflow.pyfunc.load_model('models:/{loaded}')"])
    lines += _rows("MLflow", mlflow_lines(report))
    lines += _rows("cards", card_lines(report))
    lines += _rows("artifacts", artifact_lines(report))
    lines += _rows("next", next_lines(report))
    return lines


def unchanged_lines(report: RunReport) -> list[str]:
    """The summary of a run that ended after validation because nothing changed."""
    lines = ["", headline(report)]
    lines += _rows("data", data_lines(report))
    lines += _rows("model", model_lines(report))
    lines += _rows("why", [report.retrain_reason])
    lines += _rows("MLflow", mlflow_lines(report) + ["(tag outcome=unchanged)"])
    lines += _rows("cards", card_lines(report))
    lines += _rows("next", [f"train anyway: python {report.flow_file} run --force-retrain (same options)"])
    return lines


def close_flow_run(metaflow_run: str, flow_file: str, tracking_uri: str, mlflow_run_id: str, datastore: str,
                   validation: dict, retrain_reason: str, *trained, registered_model: str, branch: str | None,
                   served: dict | None = None, baseline: dict | None = None, model_choice: dict | None = None) -> str:
    """The end step: the run's summary (also stored as summary.txt on the parent MLflow run), and the parent run
    finished with its outcome. `trained`: split sizes, test metrics, comparison, registration and the champion
    before, when the run trained a model."""
    from steps.runtime import tracking

    report = RunReport(metaflow_run, script(flow_file), tracking_uri, mlflow_run_id, datastore, validation,
                       retrain_reason, *trained, registered_model=registered_model, branch=branch, served=served)
    report.baseline, report.model_choice = baseline, model_choice
    report.experiment_id, report.mlflow_runs = mlflow_runs(tracking_uri, mlflow_run_id)
    summary = "\n".join(report.lines())
    tracking.StepRun(tracking.client(tracking_uri), mlflow_run_id).text(summary, "summary.txt")
    tracking.finish_flow_run(tracking_uri, mlflow_run_id, outcome="train" if trained else "unchanged",
                             metaflow_run=metaflow_run)
    return summary
