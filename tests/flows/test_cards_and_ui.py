"""What a person opens after a run: the end-of-run summary, the cards (`card view`), the MLflow UI's model page.

All on the session's one finished ReviewFlow run (tests/conftest.py: finished_review_flow). The browser tests
render real pages with headless Chromium (loopback only) and check that they are not blank and say what they
should; without Chromium they are skipped with the reason.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests import browser
from tests.flow_runs import BRANCH_MODEL, FLOWS, components_in_html, flow_env

pytestmark = pytest.mark.flow


def workdir_of(finished) -> Path:
    return Path(finished[2].removeprefix("sqlite:///")).parent


needs_chromium = pytest.mark.skipif(browser.chromium() is None, reason=browser.INSTALL_HINT)


def test_the_end_of_run_summary_says_what_happened_where_it_is_and_what_next(finished_review_flow):
    run, executing, uri = finished_review_flow
    summary = run.data.run_summary
    assert all(line in executing.stdout for line in summary.splitlines())  # printed by the end step
    lines = summary.splitlines()
    assert lines[1] == f"=== {run.pathspec} finished: {BRANCH_MODEL} v1 registered, now champion ==="
    assert "| data       | 400 rows in, 0 quarantined (0.0%), 400 clean" in lines
    assert "| gate       | promotion gate: passed (F1 " in summary
    assert f"| registered | models:/{BRANCH_MODEL}/1  aliases: challenger, champion" in lines
    assert f"card view {run.id}/validate" in summary and f"{run.id}/train, {run.id}/evaluate" in summary
    assert "flows/promote_flow.py run --history" in summary
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    parent = client.search_runs([client.get_experiment_by_name("reviewflow").experiment_id],
                                filter_string=f"tags.metaflow_run = '{run.pathspec}'")[0]
    assert f"run {parent.info.run_id} in {uri}" in summary
    evaluate = next(line for line in lines if line.startswith("|            | MLflow evaluate: "))
    artifacts = Path(evaluate.split(": ", 1)[1].split()[0])
    assert (artifacts / "plots" / "roc_curve.png").exists()  # the place it names really has the plots
    saved = Path(client.download_artifacts(parent.info.run_id, "summary.txt", str(workdir_of(finished_review_flow))))
    assert saved.read_text() == summary  # the same summary stays with the MLflow run


def test_card_view_train_opens_the_training_card(finished_review_flow, tmp_path):
    """`python flows/review_flow.py card view train` (latest run, no --id): the train step has exactly one card.

    A copy of the finished run's datastore keeps "latest run" this run whatever other tests add; a BROWSER
    command records what Metaflow asks the browser to open."""
    run, _, _ = finished_review_flow
    source = workdir_of(finished_review_flow) / ".metaflow"
    target = tmp_path / ".metaflow"
    shutil.copytree(source / "ReviewFlow" / run.id, target / "ReviewFlow" / run.id)
    shutil.copytree(source / "ReviewFlow" / "_meta", target / "ReviewFlow" / "_meta")
    shutil.copytree(source / "mf.cards" / "ReviewFlow" / "runs" / run.id,
                    target / "mf.cards" / "ReviewFlow" / "runs" / run.id)
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    recorder.chmod(0o755)
    env = {**os.environ, **flow_env(tmp_path), "BROWSER": f"{recorder} %s"}
    env.pop("DISPLAY", None)
    proc = subprocess.run([sys.executable, str(FLOWS / "review_flow.py"), "card", "view", "train"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Resolving card: {run.pathspec}/train/" in proc.stdout + proc.stderr
    url = opened.read_text().strip()
    assert url.startswith("file://") and "/train/" in url
    components = components_in_html(Path(url.removeprefix("file://")).read_text(), url)
    headline = [c["source"] for c in components if c["type"] == "markdown"][0]
    assert headline == "# Training: 4 of 4 epoch(s) on cpu (fp32)"
    assert [c["label"] for c in components if c["type"] == "image"] == ["training epochs", "training steps"]


def test_validate_train_and_evaluate_each_have_one_card(finished_review_flow):
    from metaflow.cards import get_cards

    run, _, _ = finished_review_flow
    for step, card_id in (("validate", "validation"), ("train", "training"), ("evaluate", "evaluation")):
        cards = get_cards(run[step].task)
        assert [c.id for c in cards] == [card_id], step  # so `card view <step>` needs no --id
    assert len(run["train"].task.data.step_history["step"]) == run.data.train_summary["steps"] == 72
    assert run["train"].task.data.oom_events == []


@needs_chromium
def test_chromium_renders_the_evaluate_and_train_cards(finished_review_flow, tmp_path):
    from metaflow.cards import get_cards

    run, _, _ = finished_review_flow
    expected = {
        "evaluate": ["Test evaluation", "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece",
                     "No champion yet", "Promotion gate: passed", "Confusion matrix", "actual positive",
                     "Accuracy by slice", "Most confident errors"],
        "train": ["Training: 4 of 4 epoch(s) on cpu (fp32)", "Started from scratch", "No out-of-memory back-offs",
                  "Per epoch", "validation accuracy", "samples/s", "learning_rate"],
    }
    for step, texts in expected.items():
        (card,) = get_cards(run[step].task)
        page = tmp_path / f"{step}.html"
        page.write_text(card.get())
        png = browser.screenshot(page.as_uri(), tmp_path / f"{step}.png", tmp_path / "profile", window=(1280, 1600))
        drawn = browser.ink(png)
        assert drawn["size"] == (1280, 1600)
        assert drawn["drawn_share"] > 0.01 and drawn["colours"] > 50, (step, drawn)  # not a blank page
        rendered = browser.dom(page.as_uri(), tmp_path / "profile")
        text = browser.visible_text(rendered)
        missing = [t for t in texts if t not in text]
        assert not missing, (step, missing, text[:2000])
        images = rendered.count("data:image/png;base64")
        assert images >= (4 if step == "evaluate" else 2), (step, images)


@needs_chromium
def test_chromium_renders_the_registered_model_page_of_the_mlflow_ui(finished_review_flow, tmp_path):
    from infra.local.mlflow_server import start_mlflow
    from infra.local.processes import stop_pid

    _, _, uri = finished_review_flow
    workdir = workdir_of(finished_review_flow)
    server = start_mlflow(workdir, str(workdir / "mlartifacts"), {})
    try:
        page = f"{server.url}/#/models/{BRANCH_MODEL}"
        text = browser.visible_text(browser.dom(page, tmp_path / "profile", budget_ms=20_000))
        assert "Registered Models" in text and BRANCH_MODEL in text, text[:2000]
        assert "Version 1" in text, text[:2000]
        assert "@ champion" in text and "@ challenger" in text, text[:2000]
        png = browser.screenshot(page, tmp_path / "model.png", tmp_path / "profile", window=(1280, 900),
                                 budget_ms=20_000)
        drawn = browser.ink(png)
        assert drawn["drawn_share"] > 0.01 and drawn["colours"] > 50, drawn
    finally:
        stop_pid(server.pid)
