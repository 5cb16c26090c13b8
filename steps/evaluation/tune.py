"""The work of TuneFlow (flows/tune_flow.py): workers that pull trials from the study (steps/evaluation/studies.py)
until the budget is spent, and one trial: a recipe sampled from the search space (steps/training/search_space.py),
trained by the same engine as ReviewFlow, scored on the validation rows only, pruned when it is clearly losing.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from steps.evaluation.studies import (
    HEARTBEAT_SECONDS,
    RUN_ATTR,
    SURPLUS_ATTR,
    counts,
    fail_dead_trials,
    own,
    progress_line,
    ran,
    running_elsewhere,
)
from steps.runtime.errors import ReviewflowError

FAILURES_IN_A_ROW = 3  # a worker stops (with the error) after this many trials in a row failed: a bug, not a recipe


def parse_timeout(text: str) -> float:
    """--timeout in seconds: '' or 0 = none; 90, 90s, 45m, 2h, 1h30m."""
    text = str(text).strip().lower()
    if text in ("", "0"):
        return 0.0
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
    if not parts or not any(parts.groups()):
        raise ReviewflowError(f"--timeout {text!r}: give a duration such as 45m, 2h, 1h30m or 900 (seconds)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return hours * 3600 + minutes * 60 + seconds


def objective_of(best_epoch_by: str) -> tuple[str, str]:
    """(the validation figure a trial is scored by, Optuna's direction): the figure that picks the best epoch."""
    return ("val_loss", "minimize") if best_epoch_by == "loss" else ("val_f1", "maximize")


# --- one trial ------------------------------------------------------------------------------------------------
@dataclass
class Kept:
    """A worker's best trial so far, with its trained classifier (tar bytes): the end step tests it."""

    trial: int
    value: float
    classifier: bytes
    max_length: int


class Worker:
    """Pulls trials from the study and trains them until the budget (trials, deadline) is spent."""

    def __init__(self, study, space, held: dict, base: dict, frames: dict, model: str, budget: int,
                 deadline: float, figure: str, log_trial=None, log=print):
        self.study, self.space, self.held, self.base = study, space, held, base
        self.frames, self.model, self.budget, self.deadline, self.figure = frames, model, budget, deadline, figure
        self.log, self.log_trial = log, log_trial  # log_trial: an MLflow recorder (TrialRecorder) or None
        self.kept: Kept | None = None
        self.tokens: dict = {}  # max_length -> {"train", "validation"}: tokenized once per length
        self.failures_in_a_row, self.last_error, self.ran = 0, None, []
        self.maximize = study.direction.name == "MAXIMIZE"

    def values(self, trial) -> dict:
        from steps.training.auto_model import recipe_values
        from steps.training.search_space import suggest

        values = {**self.base, **self.held, **suggest(trial, self.space)}
        return recipe_values(self.model, values)  # epochs 0 (fixed by the command line) is the model's recipe

    def tokens_for(self, max_length: int) -> dict:
        if max_length not in self.tokens:
            from steps.training.models import load_tokenizer
            from steps.training.tokenize import tokenize_split

            self.tokens[max_length] = tokenize_split(self.frames, load_tokenizer(self.model), max_length,
                                                     progress_mode="quiet")
        return self.tokens[max_length]

    def pruned_because(self, trial, epoch: int, value: float) -> str:
        import statistics

        from optuna.trial import TrialState

        earlier = [t.intermediate_values[epoch] for t in self.study.get_trials(deepcopy=False,
                                                                                states=(TrialState.COMPLETE,))
                   if epoch in t.intermediate_values]
        median = f" the median {statistics.median(earlier):.4f} of" if earlier else ""
        side = "below" if self.maximize else "above"
        return f"{self.figure} {value:.4f} at epoch {epoch} is {side}{median} the finished trials' at that epoch"

    def objective(self, trial) -> float:
        import optuna

        from steps.runtime import faults
        from steps.training.config import TrainConfig
        from steps.training.device import seed_everything
        from steps.training.loop import train_classifier
        from steps.training.models import load_classifier

        own(trial)
        values = self.values(trial)
        trial.set_user_attr("values", values)  # what it trained with: its command, even from a later run
        shown = ", ".join(f"{d.name} {values[d.name]:.3g}" if isinstance(values[d.name], float)
                          else f"{d.name} {values[d.name]}" for d in self.space)
        self.log(f"trial {trial.number}: {shown}")
        record = self.log_trial.open(trial, values) if self.log_trial else None
        faults.inject(f"tune/trial_{trial.number}")  # test hook; nothing unless a test sets it
        config = TrainConfig.from_values(values)
        config.validate()
        tokens = self.tokens_for(int(values["max-length"]))
        started = time.perf_counter()

        def report(metrics: dict, last: bool) -> None:
            epoch, value = int(metrics["epoch"]), float(metrics[self.figure])
            if record:
                record.epoch(metrics)
            trial.report(value, epoch)
            if not last and trial.should_prune():  # a trial ending anyway (last epoch, early stop) completes
                raise optuna.TrialPruned(self.pruned_because(trial, epoch, value))

        seed_everything(config.seed)
        classifier = load_classifier(self.model)
        try:
            result = train_classifier(classifier, tokens["train"], tokens["validation"], config, progress="quiet",
                                      log=lambda line: self.log(f"trial {trial.number}: {line}"), on_epoch=report)
        except optuna.TrialPruned as pruned:
            seconds = time.perf_counter() - started
            trial.set_user_attr("seconds", round(seconds, 1))
            self.log(f"trial {trial.number}: pruned after {seconds:.0f} s: {pruned}")
            if record:
                record.close("pruned", seconds, why=str(pruned))
            raise
        except Exception as err:
            if record:
                record.close("failed", time.perf_counter() - started, why=f"{type(err).__name__}: {err}")
            raise
        seconds = time.perf_counter() - started
        value = float(result.history[result.best_epoch - 1][self.figure])
        trial.set_user_attr("seconds", round(seconds, 1))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("samples_per_s", round(result.samples_per_s, 1))
        self.log(f"trial {trial.number}: {self.figure} {value:.4f} (epoch {result.best_epoch} of "
                 f"{len(result.history)}) in {seconds:.0f} s")
        if record:
            record.close("complete", seconds, value=value, figure=self.figure)
        if self.kept is None or (value > self.kept.value if self.maximize else value < self.kept.value):
            self.kept = Kept(trial.number, value, pack(classifier, self.model), int(values["max-length"]))
        return value

    def after_trial(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.user_attrs.get(SURPLUS_ATTR):
            return
        self.ran.append(trial.number)
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_error = trial.user_attrs.get("error") or "see the log above"
        else:
            self.failures_in_a_row = 0
        self.log(progress_line(study, self.budget, self.figure))

    def run(self) -> list[int]:
        """Trials until the study has `budget` finished or running ones, or the deadline passed."""
        while True:
            fail_dead_trials(self.study, self.log_trial.client if self.log_trial else None)
            c = counts(self.study)
            if time.time() >= self.deadline:
                self.log("--timeout reached: no more trials start in this worker")
                break
            if c.done + c.running >= self.budget:
                elsewhere = running_elsewhere(self.study) if c.done < self.budget else []
                if not elsewhere:  # done, or the last trials run in live workers on this machine
                    self.log(f"budget spent: {c.done} trials done and {c.running} running of --trials {self.budget}")
                    break
                # a worker elsewhere runs them: if it died, its heartbeat goes stale and its trial is given back
                self.log(f"waiting on trial(s) {', '.join(map(str, elsewhere))} running elsewhere "
                         f"({c.done}/{self.budget} done)")
                time.sleep(HEARTBEAT_SECONDS)
                continue
            if self.failures_in_a_row >= FAILURES_IN_A_ROW:
                raise RuntimeError(f"{FAILURES_IN_A_ROW} trials in a row failed in this worker, the last with: "
                                   f"{self.last_error}")
            self.study.optimize(self.objective_catching, n_trials=1, callbacks=[self.after_trial])
        return self.ran

    def surplus(self, trial) -> bool:
        """Whether other workers spent the budget between this worker's look and its trial's creation: trials are
        numbered in the database's order, so the first `budget` that did not fail run and a later one does not. It
        is recorded as failed and not run (left out of every count); a queued recipe it had taken is queued again."""
        from optuna.trial import TrialState

        before = [t for t in ran(self.study.get_trials(deepcopy=False))
                  if t.number < trial.number and t.state != TrialState.FAIL]
        if len(before) < self.budget:
            return False
        trial.set_user_attr(SURPLUS_ATTR, "the budget was spent by other workers")
        queued = self.study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")
        if queued:
            self.study.enqueue_trial(queued, user_attrs={"queued_again_from": trial.number})
        self.log(f"trial {trial.number}: not run, the other workers spent the budget of {self.budget} trials")
        return True

    def objective_catching(self, trial):
        """objective, with a failed trial recorded (error in its user attrs) rather than ending the worker."""
        import optuna

        if self.surplus(trial):
            return float("nan")
        try:
            return self.objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {str(err)[:500]}")
            self.log(f"trial {trial.number}: failed: {type(err).__name__}: {err}")
            return float("nan")  # Optuna records a NaN objective as a failed trial


def pack(classifier, model: str) -> bytes:
    import tempfile

    from steps.training.models import load_tokenizer, pack_directory

    with tempfile.TemporaryDirectory(prefix="reviewflow-trial-") as tmp:
        classifier.save_pretrained(tmp)
        load_tokenizer(model).save_pretrained(tmp)
        return pack_directory(tmp)


# --- MLflow: one child run per trial under the flow run -----------------------------------------------------
class TrialRecorder:
    """Opens an MLflow child run per trial: params, the per-epoch validation curve, the outcome and seconds."""

    def __init__(self, mlflow_client, parent_run_id: str, study_name: str, worker: int, pathspec: str):
        self.client, self.parent, self.study_name = mlflow_client, parent_run_id, study_name
        self.worker, self.pathspec = worker, pathspec
        self.experiment = mlflow_client.get_run(parent_run_id).info.experiment_id

    def open(self, trial, values: dict) -> TrialRun:
        from steps.runtime.tracking import log_params

        run = self.client.create_run(self.experiment, run_name=f"trial {trial.number}", tags={
            "mlflow.parentRunId": self.parent, "study": self.study_name, "trial": str(trial.number),
            "trial_state": "running", "worker": str(self.worker), "metaflow_pathspec": self.pathspec})
        log_params(self.client, run.info.run_id, values)
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        return TrialRun(self.client, run.info.run_id)


class TrialRun:
    def __init__(self, mlflow_client, run_id: str):
        self.client, self.run_id = mlflow_client, run_id

    def epoch(self, metrics: dict) -> None:
        from steps.runtime.tracking import StepRun

        handle = StepRun(self.client, self.run_id)
        handle.metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"},
                       step=int(metrics["epoch"]))
        handle.flush()

    def close(self, state: str, seconds: float, value: float | None = None, figure: str = "",
              why: str = "") -> None:
        self.client.set_tag(self.run_id, "trial_state", state)
        if why:
            self.client.set_tag(self.run_id, "outcome", why[:5000])
        self.client.log_metric(self.run_id, "seconds", round(seconds, 1))
        if value is not None:
            self.client.log_metric(self.run_id, f"objective_{figure}", value)
        self.client.set_terminated(self.run_id, "FAILED" if state == "failed" else "FINISHED")


# --- after the search -----------------------------------------------------------------------------------------
def train_recipe(values: dict, frames: dict, model: str, log=print) -> Kept:
    """Train one recipe as a trial does (same seed), without pruning: for a best trial whose weights were lost."""
    from steps.training.auto_model import recipe_values
    from steps.training.config import TrainConfig
    from steps.training.device import seed_everything
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier, load_tokenizer
    from steps.training.tokenize import tokenize_split

    values = recipe_values(model, values)  # epochs 0 (not searched, not given): the model's recipe
    config = TrainConfig.from_values(values)
    tokens = tokenize_split(frames, load_tokenizer(model), int(values["max-length"]), progress_mode="quiet")
    seed_everything(config.seed)
    classifier = load_classifier(model)
    result = train_classifier(classifier, tokens["train"], tokens["validation"], config, progress="quiet", log=log)
    figure = "val_f1" if config.best_epoch_by == "f1" else "val_loss"
    return Kept(-1, float(result.history[result.best_epoch - 1][figure]), pack(classifier, model),
                int(values["max-length"]))


def weights_of(number: int, kept: Kept | None, study, frames: dict, model: str, values: dict,
               find=None) -> tuple:
    """(Kept, where it came from) for trial `number`: this run's workers kept it, or an earlier run's worker did
    (the study names its task; `find(task)` reads its Kept, or None), or, lost with a killed worker, it is trained
    again from its recipe and seed."""
    if kept is not None and kept.trial == number:
        return kept, "kept by this run's worker"
    where = study.user_attrs.get(f"weights.{number}")
    if where and find is not None:
        try:
            found = find(where)
            if found is not None and found.trial == number:
                return found, f"kept by {where}"
        except Exception as err:  # noqa: BLE001 - an earlier run's datastore may be gone; training again works
            print(f"the weights of trial {number} in {where} cannot be read ({err})", flush=True)
    print(f"trial {number}: its weights were not kept (its worker stopped); training its recipe again", flush=True)
    again = train_recipe(values, frames, model, log=lambda line: print(f"trial {number} again: {line}", flush=True))
    return Kept(number, again.value, again.classifier, again.max_length), "trained again from its recipe"
