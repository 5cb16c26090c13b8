"""The end-of-run summary: what happened, where everything is, and the exact commands to promote or roll back."""
import re
from pathlib import Path

import numpy as np
import pytest

from steps.evaluation.metrics import classification_metrics, compare_with_champion
from steps.lifecycle.registry import Registration
from steps.lifecycle.report import RunReport, mlflow_runs, script

VALIDATION = {"rows_in": 3708, "rows_clean": 3610, "rows_quarantined": 98, "bad_fraction": 98 / 3708}
SPLIT = {"train": 2524, "validation": 365, "test": 721}


def scores(seed: int, skill: float, rows: int = 400):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    return labels, np.clip(labels * skill + rng.random(rows) * (1 - skill), 0, 1)


def report(version=1, aliases=("challenger", "champion"), gate="passed", champion_before=None, comparison=None,
           name="review-classifier", uri="sqlite:////home/me/work/mlflow.db", **extra):
    labels, probs = scores(0, 0.5)
    registration = Registration(name=name, version=version, model_uri=f"models:/{name}/{version}", created=True,
                                aliases=list(aliases), gate=gate, gate_reasons=["F1 0.9000 >= floor 0.75"])
    return RunReport("ReviewFlow/1795", "flows/review_flow.py", uri, "3f2a9c", "/home/me/work/.metaflow",
                     VALIDATION, "", SPLIT, classification_metrics(labels, probs), comparison,
                     registration.__dict__, champion_before,
                     mlflow_runs={"evaluate": {"run_id": "e1", "artifact_uri": "/home/me/work/mlruns/1/e1/artifacts"}},
                     experiment_id="1", **extra)


def rows(lines: list[str]) -> dict:
    """{label: [text, ...]} of the summary's `| label | text` rows."""
    out, label = {}, None
    for line in lines:
        match = re.fullmatch(r"\| (.{10}) \| (.*)", line)
        if match:
            label = match.group(1).strip() or label
            out.setdefault(label, []).append(match.group(2))
    return out


def test_the_first_champion_summary_has_every_part_aligned():
    lines = report().lines()
    assert lines[1] == "=== ReviewFlow/1795 finished: review-classifier v1 registered, now champion ==="
    assert all(line.startswith("| ") and line[13] == "|" for line in lines[2:])  # aligned, never stripped
    r = rows(lines)
    assert list(r) == ["data", "test", "gate", "registered", "MLflow", "cards", "artifacts", "next"]
    assert r["data"] == ["3,708 rows in, 98 quarantined (2.6%), 3,610 clean",
                         "split train 2,524 / validation 365 / test 721"]
    assert r["test"][0].startswith("test accuracy ") and r["test"][1].startswith("95% CI: accuracy ")
    assert "(400 test rows; " in r["test"][1] and "no champion to compare with" in r["test"][2]
    assert r["gate"] == ["promotion gate: passed (F1 0.9000 >= floor 0.75)"]
    assert r["registered"][0] == "models:/review-classifier/1  aliases: challenger, champion"
    assert r["MLflow"] == ["run 3f2a9c in sqlite:////home/me/work/mlflow.db",
                           "browse: mlflow ui --backend-store-uri sqlite:////home/me/work/mlflow.db --port 5000, "
                           "then open",
                           "  http://127.0.0.1:5000/#/experiments/1/runs/3f2a9c",
                           "  http://127.0.0.1:5000/#/models/review-classifier/versions/1"]
    assert r["cards"][0] == "python flows/review_flow.py card view 1795/validate"
    assert "1795/train" in r["cards"][1] and "1795/evaluate" in r["cards"][1]
    assert r["artifacts"][0].startswith("Metaflow: /home/me/work/.metaflow/ReviewFlow/1795")
    assert r["artifacts"][1].startswith("MLflow evaluate: /home/me/work/mlruns/1/e1/artifacts")
    assert r["next"] == ["history:   python flows/promote_flow.py run --history"]  # nothing to roll back to


def test_a_new_champion_is_compared_metric_by_metric_and_can_be_rolled_back():
    labels, new = scores(1, 0.6)
    _, old = scores(1, 0.3)
    comparison = compare_with_champion(labels, new, old, champion_version=1)
    r = rows(report(version=2, champion_before=1, comparison=comparison).lines())
    assert r["test"][0].split() == ["test", "metric", "this", "model", "champion", "v1", "delta"]
    accuracy = r["test"][1].split()
    assert accuracy[0] == "accuracy" and accuracy[-1] == "better"
    assert float(accuracy[3]) == pytest.approx(comparison["delta"]["accuracy"], abs=1e-4)
    log_loss = next(line.split() for line in r["test"] if line.startswith("log_loss"))
    assert float(log_loss[3]) < 0 and log_loss[-1] == "better"  # lower log-loss is the better one
    assert "McNemar exact p" in r["test"][-1]
    assert r["next"][0] == ("roll back: python flows/promote_flow.py run --rollback --reason 'why'   "
                            "(champion back to v1)")


def test_a_version_that_failed_the_gate_gets_the_recheck_and_force_commands():
    lines = report(version=3, aliases=("challenger",), gate="failed", champion_before=2).lines()
    assert lines[1].endswith("review-classifier v3 registered, challenger, champion unchanged ===")
    r = rows(lines)
    assert r["gate"][0].startswith("promotion gate: failed")
    assert r["next"][:2] == [
        "re-check:  python flows/promote_flow.py run --version 3   (the gate again, on this run's test rows)",
        "force:     python flows/promote_flow.py run --version 3 --force --reason 'why'"]


def test_promote_never_gets_the_promote_command_and_other_names_are_passed_on():
    r = rows(report(version=4, aliases=("challenger",), gate="passed", name="shoes", registered_model="shoes").lines())
    assert r["next"][0] == ("promote:   python flows/promote_flow.py run --version 4 --reason 'why' "
                            "--registered-model shoes")


def test_an_mlflow_server_gets_direct_links():
    r = rows(report(uri="http://mlflow.internal:5000/").lines())
    assert r["MLflow"] == ["run 3f2a9c in http://mlflow.internal:5000/",
                           "  http://mlflow.internal:5000/#/experiments/1/runs/3f2a9c",
                           "  http://mlflow.internal:5000/#/models/review-classifier/versions/1"]


def test_a_run_with_nothing_to_retrain_says_why_and_how_to_train_anyway():
    unchanged = RunReport("ReviewFlow/1796", "flows/review_flow.py", "sqlite:///mlflow.db", "9b", "/w/.metaflow",
                          VALIDATION,
                          "same data, model and settings as champion v1 (ReviewFlow/1795): nothing to train")
    lines = unchanged.lines()
    assert lines[1] == "=== ReviewFlow/1796 finished: nothing to retrain ==="
    r = rows(lines)
    assert r["why"] == ["same data, model and settings as champion v1 (ReviewFlow/1795): nothing to train"]
    assert r["cards"] == ["python flows/review_flow.py card view 1796/validate"]
    assert r["next"] == ["train anyway: python flows/review_flow.py run --force-retrain (same options)"]


def test_the_flow_file_is_written_as_a_user_would_type_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flows").mkdir()
    assert script(tmp_path / "flows" / "review_flow.py") == "flows/review_flow.py"
    monkeypatch.chdir(tmp_path / "flows")
    assert script(Path("/opt/reviewflow/flows/review_flow.py")) == "/opt/reviewflow/flows/review_flow.py"


def test_mlflow_runs_finds_the_parent_and_each_step_run(tracking_uri):
    from steps.runtime import tracking

    parent = tracking.start_flow_run(tracking_uri, "ReviewFlow", "1", {"epochs": 1})
    for name in ("validate", "evaluate"):
        with tracking.step_run(tracking_uri, parent, name, f"ReviewFlow/1/{name}/2"):
            pass
    experiment, runs = mlflow_runs(tracking_uri, parent)
    assert sorted(runs) == ["", "evaluate", "validate"] and runs[""]["run_id"] == parent
    assert all(r["artifact_uri"].endswith(f"{r['run_id']}/artifacts") for r in runs.values())
    client = tracking.client(tracking_uri)
    assert experiment == client.get_experiment_by_name("reviewflow").experiment_id


def test_a_branch_run_names_its_own_model_and_how_to_take_it_into_production():
    name = "review-classifier.user.alice"
    r = rows(report(name=name, branch="user.alice", served={"backend": "onnx-int8", "chose": "fastest"}).lines())
    assert r["registered"][1] == "served by onnx-int8: fastest"
    assert r["registered"][2] == f"load: mlflow.pyfunc.load_model('models:/{name}@champion')"
    assert r["next"][-1] == (f"to prod:   python flows/promote_flow.py --production run --source models:/{name}/1 "
                             "--reason 'why'")
    production = rows(report(branch="prod").lines())
    assert not any(line.startswith("to prod") for line in production["next"])
