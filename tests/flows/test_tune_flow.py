"""TuneFlow for real (metaflow.Runner): a tiny encoder, 2 workers sharing one study in SQLite beside mlflow.db.

- a study seeded with known recipes (enqueued, as a user seeds one): 6 good ones and 2 that cannot learn, so the
  median pruner has finished trials to compare with when the bad ones reach epoch 1, and prunes them;
- a worker killed in the middle of a trial: its trial is marked failed (not counted) and its recipe queued again;
  `resume` finishes the budget without repeating a finished trial; a second `run --study` continues the study;
- a bad space file fails in start, naming the setting.
"""
import sqlite3

import pytest

from steps.evaluation.studies import ran
from tests.fixtures import write_reviews_csv
from tests.flow_runs import card_components, run_flow, runner, store_client

pytestmark = pytest.mark.flow

TINY = {"max_length": 32, "seed": 1}
GOOD = {"learning-rate": 1e-2, "batch-size": 8, "epochs": 3}  # learns the synthetic words in one epoch
BAD = {"learning-rate": 1e-7, "batch-size": 8, "epochs": 3}  # cannot: stays at chance, clearly losing at epoch 1
SPACE = "learning-rate: {low: 1.0e-7, high: 2.0e-2, log: true}\nbatch-size: [8, 16]\nepochs: {low: 1, high: 3}\n" \
        "warmup-ratio: 0.1\nweight-decay: 0.01\nfreeze-encoder: false\nclass-weights: none\nmax-length: null\n"


def study_in(workdir, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def enqueue(workdir, name, recipes):
    import optuna

    study = optuna.create_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}", direction="maximize",
                                load_if_exists=True)
    for recipe in recipes:
        study.enqueue_trial(recipe)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_model_dir):
    workdir = tmp_path_factory.mktemp("tune-flow")
    data = write_reviews_csv(workdir / "reviews.csv", rows=400)
    space = workdir / "space.yaml"
    space.write_text(SPACE)
    enqueue(workdir, "seeded", [GOOD] * 6 + [BAD] * 2)
    run, executing = run_flow("tune_flow.py", workdir, data=str(data), model=str(tiny_model_dir), trials=8,
                              workers=2, space=str(space), study="seeded", **TINY)
    assert executing.status == "successful", executing.stdout[-4000:] + executing.stderr[-4000:]
    return run, executing, workdir, data, space


def test_two_workers_fill_the_budget_and_the_bad_recipes_are_pruned(tuned):
    from optuna.trial import TrialState

    run, executing, workdir, _, _ = tuned
    study = study_in(workdir, "seeded")
    trials = ran(study.trials)  # a trial made after the budget was spent (two workers looked at once) never ran
    states = [t.state for t in trials]
    assert len(states) == 8 and TrialState.RUNNING not in states and TrialState.FAIL not in states
    bad = [t for t in trials if t.params["learning-rate"] == BAD["learning-rate"]]
    assert [t.state for t in bad] == [TrialState.PRUNED] * 2, [(t.number, t.intermediate_values) for t in bad]
    assert all(max(t.intermediate_values) < 3 for t in bad)  # stopped before the last of their 3 epochs
    assert "pruned after" in executing.stdout and "below the median" in executing.stdout
    workers = {t.user_attrs["pid"] for t in trials}
    assert len(workers) == 2  # both workers pulled trials from the one study
    assert run.data.best["trial"] in {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert "8/8 trials done (2 pruned, 0 failed)" in executing.stdout


def test_the_test_rows_are_scored_once_for_the_best_trial_and_its_command_printed(tuned):
    run, executing, _, data, _ = tuned
    best, test = run.data.best, run.data.test_metrics
    assert best["weights"] == "kept by this run's worker"
    assert test["rows"] == len(run.data.split_data.test) and test["accuracy"] > 0.8
    assert best["values"]["learning-rate"] == GOOD["learning-rate"]
    assert run.data.train_command.startswith(f"python flows/review_flow.py run --data {data}")
    assert "--learning-rate 0.01" in run.data.train_command and "--batch-size 8" in run.data.train_command
    assert run.data.train_command in executing.stdout


def test_every_trial_is_an_mlflow_child_run_with_its_curve(tuned):
    run, _, workdir, _, _ = tuned
    client = store_client(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reviewflow").experiment_id
    (parent,) = client.search_runs([experiment], f"tags.metaflow_run = '{run.pathspec}'")
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "seeded"
    assert parent.data.metrics["trials_pruned"] == 2 and "test_accuracy" in parent.data.metrics
    children = [c for c in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
                if "trial" in c.data.tags]
    assert sorted(int(c.data.tags["trial"]) for c in children) == list(range(8))
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params["learning-rate"]
        curve = client.get_metric_history(child.info.run_id, "val_f1")
        last = 3 if child.data.tags["trial_state"] == "complete" else 2
        assert curve and max(m.step for m in curve) <= last
        assert child.data.metrics["seconds"] >= 0
    assert sum(c.data.tags["trial_state"] == "pruned" for c in children) == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tuning")}
    assert {"tuning/trials.json", "tuning/history.png", "tuning/best_trials.txt"} <= artifacts


def test_the_card_shows_the_best_trials_history_importances_and_command(tuned):
    run, _, _, _, _ = tuned
    components = card_components(run["end"].task, "tuning")
    text = " ".join(str(c.get("source", "")) for c in components if c["type"] == "markdown")
    assert "study seeded" in text and "2 pruned" in text and run.data.train_command in text
    images = [c["label"] for c in components if c["type"] == "image"]
    assert images[0] == "optimisation history"
    tables = [c for c in components if c["type"] == "table"]
    assert tables[0]["columns"][:2] == ["trial", "val_f1"]
    assert run.data.importances == {} or "parameter importances" in images


def test_a_killed_worker_fails_its_trial_and_resume_finishes_the_study(tiny_model_dir, tmp_path):
    from optuna.trial import TrialState

    data = write_reviews_csv(tmp_path / "reviews.csv", rows=240)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    flow = runner("tune_flow.py", tmp_path, env={"REVIEWFLOW_FAIL_AT": "tune/trial_2=kill"})
    killed = flow.run(data=str(data), model=str(tiny_model_dir), trials=5, workers=2, space=str(space),
                      study="killed", **TINY)
    failed = killed.run
    assert not failed.successful
    before = study_in(tmp_path, "killed")
    finished_before = {t.number: t.params for t in before.trials if t.state.is_finished()}
    # the worker died with it: RUNNING, or already FAILED by the other worker, which saw its pid gone
    assert before.trials[2].state in (TrialState.RUNNING, TrialState.FAIL)

    resumed = runner("tune_flow.py", tmp_path).resume(origin_run_id=failed.id)
    assert resumed.status == "successful", resumed.stdout[-4000:] + resumed.stderr[-4000:]
    study = study_in(tmp_path, "killed")
    assert study.trials[2].state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials) == 5  # not counted
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 2]
    assert len(retried) == 1 and retried[0].params == study.trials[2].params  # its recipe, queued again
    for number, params in finished_before.items():  # nothing finished was run again
        assert study.trials[number].params == params
    if before.trials[2].state == TrialState.RUNNING:  # else the other worker failed it as Metaflow stopped it, and
        assert "marked failed (not counted)" in resumed.stdout  # its last lines may not have reached the log
    client = store_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reviewflow").experiment_id
    (killed,) = client.search_runs([experiment], "tags.trial = '2' AND tags.study = 'killed'")
    assert killed.info.status == "FAILED" and killed.data.tags["trial_state"] == "failed"

    again, executing = run_flow("tune_flow.py", tmp_path, data=str(data), model=str(tiny_model_dir), trials=7,
                                workers=1, space=str(space), study="killed", train_best=True, **TINY)
    assert executing.status == "successful", executing.stdout[-3000:]
    study = study_in(tmp_path, "killed")
    assert sum(t.state.is_finished() and t.state != TrialState.FAIL for t in study.trials) == 7  # 2 more
    assert "7/7 trials done" in executing.stdout

    # --train-best: ReviewFlow with the best recipe, registered as usual, the study in its tags
    assert again.data.train_best_run.startswith("ReviewFlow/")
    (trained,) = client.search_runs([experiment], "tags.metaflow_flow = 'ReviewFlow'")
    assert trained.data.tags["study"] == "killed" and trained.data.tags["tuned_by"] == again.pathspec
    assert trained.data.params["learning-rate"] == str(again.data.best["values"]["learning-rate"])
    assert trained.data.params["model"] == str(tiny_model_dir)
    assert client.search_model_versions("name = 'review-classifier.user.reviewflow-tests'")


def test_a_bad_space_file_fails_in_start_naming_the_setting(tiny_model_dir, tmp_path):
    data = write_reviews_csv(tmp_path / "reviews.csv", rows=80)
    space = tmp_path / "space.yaml"
    space.write_text("learning-rat: {low: 1.0e-5, high: 1.0e-4}\nepochs: {low: 4, high: 2}\n")
    _, executing = run_flow("tune_flow.py", tmp_path, data=str(data), model=str(tiny_model_dir), space=str(space))
    assert executing.status == "failed"
    out = executing.stdout + executing.stderr
    assert "unknown setting 'learning-rat' (did you mean learning-rate?)" in out
    assert "epochs: an empty range, low 4 is above high 2" in out
    assert [step.id for step in executing.run] == ["start"]  # nothing ran after it
    assert not (tmp_path / "optuna.db").exists() or not sqlite3.connect(tmp_path / "optuna.db").execute(
        "select name from sqlite_master where name = 'trials'").fetchone()


def test_a_password_in_storage_is_refused_before_metaflow_stores_the_run(tmp_path):
    import subprocess
    import sys

    from tests.flow_runs import FLOWS, flow_env

    done = subprocess.run([sys.executable, str(FLOWS / "tune_flow.py"), "run", "--storage",
                           "postgresql+psycopg2://tuner:hunter2@127.0.0.1:5432/optuna"], cwd=tmp_path,
                          env=flow_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().endswith("writes it into services.env)")
    assert "--storage holds a password" in done.stderr and "hunter2" not in done.stdout + done.stderr
    assert not (tmp_path / ".metaflow").exists()  # no run, so no parameters stored anywhere
