"""MonitorFlow's card: the verdict, what was read, input drift and prediction drift against the champion, the plots."""
from __future__ import annotations

from flowkit.cards import short

SAMPLE_TEXTS = 10
TEXT_CHARS = 160


def verdict(report) -> str:
    if report.status == "too_few":
        return f"Not judged: {report.records} new records, {report.min_records} needed"
    if not report.judged:
        return "Not judged: " + "; ".join(report.notes)
    if report.drift:
        return f"Drift against champion v{report.champion_version}: {', '.join(report.drifted)}"
    return f"No drift against champion v{report.champion_version} ({report.status})"


def monitoring_card(report, window: dict, plots: dict, action: str, mlflow_run_id: str, samples=None) -> list:
    """Card components for a MonitorReport; `window` says which files were read, `action` what was done."""
    from metaflow.cards import Image, Markdown, Table

    from steps.lifecycle import monitor

    parts = [Markdown(f"# {verdict(report)}"),
             Markdown(f"Log `{short(window['location'], 200)}`: **{report.records}** records in "
                      f"{len(window['files'])} new file(s) after watermark "
                      f"`{window['previous_watermark'] or '(start)'}`"
                      f"; {window['waiting']} newer file(s) left for the next check (younger than "
                      f"{window['settle_seconds']} s). Unreadable files: {len(window['unreadable'])}."),
             Markdown(f"**Action:** {action}" if "\n" not in action else
                      "**Action:** " + action.splitlines()[0] + "\n\n```\n" + "\n".join(
                          line.strip() for line in action.splitlines()[1:]) + "\n```")]
    if report.served_by:
        parts.append(Table([[k, v] for k, v in report.served_by.items()], headers=["served by", "records"]))
    if report.input_features:
        parts.append(Markdown("## Inputs against the champion's training data (validate's drift code)"))
        parts.append(Table([[f["name"], f"{f['psi']:.3f}", f["level"], f["reference"], f["new"]]
                            for f in report.input_features],
                           headers=["feature", "PSI", "level", "training data", "logged requests"]))
    if report.prediction_features:
        parts.append(Markdown("## Predictions"))
        parts.append(Table([[f["name"], f"{f['measure']} {f['value']:.3f}", f"{f['threshold']:g}", f["level"],
                             f["reference"], f["new"]] for f in report.prediction_features],
                           headers=["check", "value", "drift at", "level", "reference", "logged"]))
    t = monitor.thresholds()
    parts.append(Markdown(
        f"Thresholds: PSI >= {t['psi_drift']} is drift, >= {t['psi_moderate']} moderate. Confidence = max(p, 1 - p), "
        f"low below {t['low_confidence']}; low-confidence share drifts when {t['low_confidence_rise']:.0%} above the "
        f"champion's share on its test split (without that reference: at {t['low_confidence_share']:.0%})."))
    for name, png in plots.items():
        parts.append(Image(src=png, label=name.removesuffix(".png").replace("_", " ")))
    if report.notes:
        from flowkit.cards.explanations import inert  # notes quote log records (model names, file keys): untrusted

        parts.append(Markdown("Notes: " + "; ".join(inert(short(n, 300)) for n in report.notes)))
    if window["unreadable"]:
        parts.append(Table([[short(k, 120), short(why, 200)] for k, why in window["unreadable"]],
                           headers=["unreadable file (skipped)", "why"]))
    if samples is not None and len(samples):
        parts.append(Markdown(f"## {min(len(samples), SAMPLE_TEXTS)} least confident logged predictions"))
        parts.append(Table([[f"{r.probability_positive:.3f}", short(r.text, TEXT_CHARS)]
                            for r in samples.head(SAMPLE_TEXTS).itertuples()],
                           headers=["probability positive", "text"]))
    parts.append(Markdown(f"Figures and `monitoring/report.json` are artifacts of MLflow run `{mlflow_run_id}`."))
    return parts
