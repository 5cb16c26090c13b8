"""What a person reads at the end of a run: a compact summary with where everything is and what to do next."""
from __future__ import annotations


def summary_lines(test_metrics: dict, registration: dict, tracking_uri: str, mlflow_run_id: str,
                  metaflow_run: str) -> list[str]:
    name, version = registration["name"], registration["version"]
    aliases = ", ".join(registration.get("aliases", [])) or "none"
    lines = [
        "",
        f"=== {metaflow_run} finished ===",
        f"test accuracy {test_metrics['accuracy']:.4f}   F1 {test_metrics['f1']:.4f}   "
        f"ROC-AUC {test_metrics['roc_auc']:.4f}   ({test_metrics['rows']} test reviews)",
        f"registered: models:/{name}/{version}  aliases: {aliases}"
        + ("" if registration.get("created", True) else "  (found from an earlier attempt; not duplicated)"),
    ]
    if registration.get("gate"):
        lines.append(f"promotion gate: {registration['gate']} ({'; '.join(registration.get('gate_reasons', []))})")
    lines.append(f"MLflow: {tracking_uri}  run {mlflow_run_id}")
    if tracking_uri.startswith("sqlite:"):
        lines.append(f"  browse: mlflow ui --backend-store-uri {tracking_uri}")
    lines.append(f"  load:   mlflow.pyfunc.load_model('models:/{name}@champion')")
    return lines


def unchanged_lines(reason: str, tracking_uri: str, mlflow_run_id: str, metaflow_run: str) -> list[str]:
    """The summary of a run that ended after validation because nothing changed."""
    return [
        "",
        f"=== {metaflow_run} finished: nothing to retrain ===",
        reason,
        f"MLflow: {tracking_uri}  run {mlflow_run_id} (tag outcome=unchanged)",
    ]
