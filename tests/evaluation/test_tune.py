"""TuneFlow's study in-process (steps/evaluation/tune.py): where it lives, what a later run may continue, the budget
kept exactly by workers that look at once, trials of dead workers failed and queued again, a pruned trial that says
why, and a best trial whose weights were lost trained again."""
import subprocess

import optuna
import pytest
from optuna.trial import TrialState

from infra.local.services import env_file_text
from steps.evaluation import studies, tune
from steps.runtime.errors import ReviewflowError
from steps.training.search_space import distribution, resolve_space
from tests.fixtures import review_frame

KEY = studies.StudyKey("tiny", "val_f1 (maximize)", "sha256:abc")


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def test_the_study_sits_beside_the_mlflow_sqlite_store_unless_told(tmp_path, monkeypatch):
    monkeypatch.delenv("REVIEWFLOW_STUDY_STORAGE", raising=False)
    assert studies.study_storage("", f"sqlite:///{tmp_path}/mlflow.db") == f"sqlite:///{tmp_path}/optuna.db"
    assert studies.study_storage("sqlite:///elsewhere.db", "sqlite:///x/mlflow.db") == "sqlite:///elsewhere.db"
    monkeypatch.setenv("REVIEWFLOW_STUDY_STORAGE", "postgresql+psycopg2://u:pw@127.0.0.1:5432/optuna")
    assert studies.study_storage("", "http://127.0.0.1:5000").endswith("/optuna")
    monkeypatch.delenv("REVIEWFLOW_STUDY_STORAGE")
    with pytest.raises(ReviewflowError, match="not a SQLite file, so the study has no default database"):
        studies.study_storage("", "http://127.0.0.1:5000")
    with pytest.raises(ReviewflowError, match="not a database URL"):
        studies.study_storage("studies.db", "sqlite:///x/mlflow.db")


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u@h/db?password=zz", "postgresql://u@h/db?password=%2A%2A%2A"),
    ("postgresql+psycopg2://u:p@w@h:5432/optuna", "<a value that is not a database URL>"),  # where does it end?
    ("user:pw@host/db", "<a value that is not a database URL>"),
])
def test_a_password_is_never_echoed_whatever_the_url_looks_like(url, shown):
    assert studies.masked(url) == shown and "zz" not in studies.masked(url)


def test_a_password_in_storage_is_refused_before_the_run_is_stored():
    refused = studies.refuse_password_option(["tune_flow.py", "run", "--storage", "postgresql://u:pw@h/optuna"])
    assert refused.startswith("--storage holds a password") and "REVIEWFLOW_STUDY_STORAGE" in refused
    assert studies.refuse_password_option(["tune_flow.py", "run", "--storage=postgresql://u@h/o?password=x"])
    assert studies.refuse_password_option(["tune_flow.py", "run", "--storage", "sqlite:///s.db"]) is None


def test_passwords_are_masked_and_the_services_env_names_the_study_database():
    assert studies.masked("postgresql+psycopg2://reviewflow:s3cret@127.0.0.1:5432/optuna") == \
        "postgresql+psycopg2://reviewflow:***@127.0.0.1:5432/optuna"
    assert studies.masked("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"

    class S3:
        bucket = "b"

        def env(self):
            return {}

    assert "export REVIEWFLOW_STUDY_STORAGE=sqlite:///x/optuna.db" in env_file_text(S3(), None,
                                                                                    study_storage="sqlite:///x/optuna.db")


@pytest.mark.parametrize("text, seconds", [("", 0), ("0", 0), ("90", 90), ("90s", 90), ("45m", 2700), ("2h", 7200),
                                           ("1h30m", 5400)])
def test_timeouts(text, seconds):
    assert tune.parse_timeout(text) == seconds


def test_a_bad_timeout_says_how_to_write_one():
    with pytest.raises(ReviewflowError, match="--timeout 'soon': give a duration such as 45m"):
        tune.parse_timeout("soon")


def test_a_study_is_continued_only_with_the_same_model_objective_and_data(url):
    study = studies.open_study(url, "s", KEY, "maximize", "{}")
    assert study.user_attrs["key.data"] == "sha256:abc"
    assert studies.open_study(url, "s", KEY, "maximize", "{}").study_name == "s"
    other = studies.StudyKey("tiny", "val_f1 (maximize)", "sha256:other")
    with pytest.raises(ReviewflowError, match="--study s was searched with other settings .data: sha256:abc in the "
                                              "study, sha256:other now"):
        studies.open_study(url, "s", other, "maximize", "{}")


def test_the_database_that_cannot_be_opened_is_named_without_its_password(tmp_path):
    with pytest.raises(ReviewflowError) as refused:
        studies.storage(f"sqlite:///{tmp_path}/no/such/folder/optuna.db")
    assert "cannot be opened" in str(refused.value)
    with pytest.raises(ReviewflowError) as refused:
        studies.storage("postgresql+psycopg2://u:topsecret@127.0.0.1:1/optuna")
    assert "topsecret" not in str(refused.value) and "u:***@" in str(refused.value)
    assert "not a database URL" not in str(refused.value)  # the driver's own words stay, less the password


def test_a_study_is_continued_only_with_the_same_fixed_settings_and_mixable_ranges(url):
    space, _ = resolve_space({"batch-size": [8, 16], "learning-rate": {"low": 1e-5, "high": 1e-3}})
    key = studies.StudyKey("tiny", "val_f1 (maximize)", "sha256:abc", '{"patience": 2, "seed": 1}')
    study = studies.open_study(url, "fixed", key, "maximize", "{}", space)
    trial = study.ask({d.name: distribution(d) for d in space})
    study.tell(trial, 0.8)
    narrower, _ = resolve_space({"batch-size": [8, 16], "learning-rate": {"low": 2e-5, "high": 1e-4}})
    assert studies.open_study(url, "fixed", key, "maximize", "{}", narrower)  # a range may narrow
    with pytest.raises(ReviewflowError, match="seed: 1 in the study, 2 now"):
        studies.open_study(url, "fixed", studies.StudyKey("tiny", "val_f1 (maximize)", "sha256:abc",
                                                          '{"patience": 2, "seed": 2}'), "maximize", "{}", space)
    other, _ = resolve_space({"batch-size": [8, 32]})
    with pytest.raises(ReviewflowError, match="the space cannot continue it .batch-size: now one of 8, 32"):
        studies.open_study(url, "fixed", key, "maximize", "{}", other)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_running_trial_of_a_dead_worker_is_failed_and_its_recipe_queued_once_more(url):
    study = studies.open_study(url, "dead", KEY, "maximize", "{}")
    trial = study.ask({"learning-rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)})
    studies.own(trial)
    trial.set_user_attr(studies.PID_ATTR, dead_pid())
    alive = study.ask()
    studies.own(alive)  # this process: alive, left alone
    assert studies.fail_dead_trials(study) == [trial.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["failed_trial"] == trial.number
    assert studies.fail_dead_trials(study) == []  # once


def test_a_trial_made_after_others_spent_the_budget_is_not_run_and_gives_back_a_queued_recipe(url):
    studies.open_study(url, "budget", KEY, "maximize", "{}")
    study = studies.load_study(url, "budget", seed=0, budget=1)
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    study.enqueue_trial({"learning-rate": 1e-4})
    space, held = resolve_space()
    worker = tune.Worker(study, space, held, {}, {}, "tiny", budget=1, deadline=float("inf"), figure="val_f1",
                         log=lambda line: None)
    assert worker.run() == []  # the budget is spent: no trial starts
    trial = study.ask()  # as a worker whose look came before the other's trial was made
    assert trial.params == {} and worker.surplus(trial)
    study.tell(trial, state=TrialState.FAIL)
    assert studies.counts(study) == studies.Counts(complete=1, pruned=0, failed=0, running=0)  # it never ran
    assert [t.system_attrs.get("fixed_params") for t in study.get_trials(states=(TrialState.WAITING,))] == [
        {"learning-rate": 1e-4}]


@pytest.fixture(scope="module")
def frames(tiny_model_dir):
    frame = review_frame(160, seed=3)
    return {"train": frame.iloc[:120], "validation": frame.iloc[120:]}


def test_one_worker_trains_trials_until_the_budget_prunes_the_losing_ones_and_keeps_its_best(url, frames,
                                                                                           tiny_model_dir):
    study = studies.open_study(url, "w", KEY, "maximize", "{}")
    good = {"learning-rate": 1e-2, "epochs": 3}
    for recipe in [good] * 4 + [{"learning-rate": 1e-7, "epochs": 3}]:
        study.enqueue_trial(recipe)
    study = studies.load_study(url, "w", seed=0, budget=5)
    space, held = resolve_space({"learning-rate": {"low": 1e-7, "high": 2e-2}, "epochs": {"low": 1, "high": 3},
                                 "batch-size": [8], "max-length": [32], "warmup-ratio": 0.0, "weight-decay": 0.0,
                                 "freeze-encoder": False, "class-weights": "none"})
    lines = []
    worker = tune.Worker(study, space, held, {"seed": 1, "patience": 0}, frames, str(tiny_model_dir), budget=5,
                         deadline=float("inf"), figure="val_f1", log=lines.append)
    assert worker.run() == [0, 1, 2, 3, 4]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED]
    assert max(trials[4].intermediate_values) < 3
    assert any("trial 4: pruned after" in line and "below the median" in line for line in lines)
    assert worker.kept.trial == studies.best_trial(study).number and worker.kept.classifier[:2]
    assert lines[-1].startswith("budget spent: 5 trials done")


def test_scored_by_the_validation_loss_lower_is_better(url, frames, tiny_model_dir):
    key = studies.StudyKey("tiny", "val_loss (minimize)", "sha256:abc")
    study = studies.open_study(url, "loss", key, "minimize", "{}")
    for lr in (1e-2, 1e-2, 1e-2, 1e-2, 1e-7):
        study.enqueue_trial({"learning-rate": lr, "epochs": 3})
    study = studies.load_study(url, "loss", seed=0, budget=5)
    space, held = resolve_space({"learning-rate": {"low": 1e-7, "high": 2e-2}, "epochs": {"low": 1, "high": 3},
                                 "batch-size": [8], "max-length": [32], "warmup-ratio": 0.0, "weight-decay": 0.0,
                                 "freeze-encoder": False, "class-weights": "none"})
    lines = []
    worker = tune.Worker(study, space, held, {"seed": 1, "patience": 0, "best-epoch-by": "loss"}, frames,
                         str(tiny_model_dir), budget=5, deadline=float("inf"), figure="val_loss", log=lines.append)
    worker.run()
    trials = study.get_trials()
    assert trials[4].state == TrialState.PRUNED, [t.intermediate_values for t in trials]
    assert any("val_loss" in line and "is above the median" in line for line in lines)
    best = studies.best_trial(study)
    assert best.value == min(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert worker.kept.trial == best.number and best.user_attrs["values"]["best-epoch-by"] == "loss"


def test_a_best_trial_whose_weights_were_lost_is_trained_again_from_its_recipe(url, frames, tiny_model_dir):
    study = studies.open_study(url, "lost", KEY, "maximize", "{}")
    values = {"learning-rate": 1e-2, "epochs": 0, "batch-size": 8, "max-length": 32, "seed": 1}  # 0: the recipe
    kept, where = tune.weights_of(7, None, study, frames, str(tiny_model_dir), values)
    assert where == "trained again from its recipe" and kept.trial == 7 and kept.max_length == 32
    assert 0 <= kept.value <= 1 and kept.classifier
