"""TuneFlow: search the training recipe (Optuna, TPE sampling, median pruning), in parallel workers, resumable.

    python flows/tune_flow.py run --trials 24 --workers 2 --timeout 45m
    python flows/tune_flow.py run --space space.yaml --study my-study --data reviews.csv --train-best

start -> ingest -> validate -> split -> worker (foreach --workers) -> join -> end. The data is read, checked and
split exactly as ReviewFlow does. The study lives in a database (steps/evaluation/studies.py), so the workers, which
each pull trials until `--trials` are done or `--timeout` has passed, share it; so do Argo pods, a `resume`, and a
later `run --study NAME`. Trials are scored on the validation rows only; the test rows are scored once, at the end,
for the best trial. MLflow: one parent run, one child run per trial. The end card has the best trials, the
optimisation history, parameter importances and the ReviewFlow command for the best recipe; `--train-best` runs it.
"""
from metaflow import FlowSpec, Parameter, card, current, resources, step

from flowkit.launch import main
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, settings
from flowkit.step_runs import closing_flow_run

NOT_TUNED = ("fail-on-drift",)  # there is no champion to drift from


@ship_library
@settings("data", "model", "training", exclude=NOT_TUNED)
class TuneFlow(FlowSpec):
    trials = Parameter("trials", default=24, type=int,
                       help="How many trials the study should have finished (complete or pruned): trials it already "
                            "has count, failed ones do not.")
    workers = Parameter("workers", default=2, type=int,
                        help="Workers pulling trials from the study side by side (a foreach; on Argo, pods). On one "
                             "machine they share its cores.")
    timeout = Parameter("timeout", default="",
                        help="No trial starts after this long in a worker (e.g. 45m, 2h, 900); a running trial "
                             "finishes. Empty: no limit.")
    space = Parameter("space", default="",
                      help="A YAML/JSON file (local or s3://) that narrows, widens, fixes or adds settings of the "
                           "search space (docs/tuning.md); empty: the default space of steps/settings.py.")
    study = Parameter("study", default="",
                      help="The study's name: an existing study is continued (its finished trials are kept). Empty: "
                           "a new study named after this run.")
    storage = Parameter("storage", default="",
                        help="The study's database (SQLAlchemy URL; one with a password is refused, as parameters "
                             "are stored with the run: put it in REVIEWFLOW_STUDY_STORAGE). Empty: "
                             "REVIEWFLOW_STUDY_STORAGE, else optuna.db beside the MLflow SQLite store.")
    train_best = Parameter("train-best", default=False, type=bool, is_flag=True,
                           help="After the search, run ReviewFlow with the best recipe (gated and registered as "
                                "usual, the study named in its tags).")

    @step
    def start(self):
        from steps import settings as catalog
        from steps.data.ingest import check_data_option
        from steps.evaluation import studies, tune
        from steps.runtime import tracking
        from steps.runtime.errors import ReviewflowError
        from steps.training.auto_model import choose_model
        from steps.training.models import check_max_length
        from steps.training.search_space import as_json, load_space

        values = {s.name: getattr(self, s.attr) for s in catalog.select("data", "model", "training")
                  if s.name not in NOT_TUNED}
        catalog.check(values)
        if not 1 <= self.trials <= 10_000 or not 1 <= self.workers <= 64:
            raise ReviewflowError(f"--trials must be 1 to 10000 and --workers 1 to 64, got {self.trials} and "
                                  f"{self.workers}")
        self.timeout_seconds = tune.parse_timeout(self.timeout)
        check_data_option(self.data)
        choice = choose_model(self.model, None)
        self.base_model, self.model_why = choice.model, choice.why
        # an option given on the command line (a value other than its default) is fixed, not searched
        fixed = {n: values[n] for n in catalog.SEARCHABLE if values[n] != catalog.default(n)}
        self.search_space, self.held = load_space(self.space, fixed)
        for length in [self.held.get("max-length", self.max_length)] + [
                max(d.choices or (d.high,)) for d in self.search_space if d.name == "max-length"]:
            check_max_length(self.base_model, int(length))
        self.base_values = values
        self.figure, self.direction = tune.objective_of(self.best_epoch_by)
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.study_url_shown = studies.masked(studies.study_storage(self.storage, self.tracking_uri))
        self.study_name = self.study or f"{current.flow_name}-{current.run_id}"
        self.space_json = as_json(self.search_space, self.held)
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id,
            {**flow_parameters(self), "storage": self.study_url_shown, "model.resolved": self.base_model,
             "space.searched": self.space_json}, tags={"study": self.study_name})
        timeout = f", none after {self.timeout}" if self.timeout_seconds else ""
        print(f"Model: {self.base_model} ({choice.why}).\nPlan: study {self.study_name} in {self.study_url_shown}: "
              f"{self.trials} trials by {self.workers} worker(s){timeout}, scored by validation "
              f"{self.figure.removeprefix('val_')} ({self.direction}), median pruning per epoch.\nSearched: "
              + "; ".join(d.describe() for d in self.search_space)
              + (f"\nFixed: {', '.join(f'{k} {v}' for k, v in self.held.items())}" if self.held else "")
              + f"\nMLflow: {self.tracking_uri} (run {self.mlflow_run_id}).")
        self.next(self.ingest)

    @step
    def ingest(self):
        from flowkit.data_steps import ingest_step

        result = ingest_step(self)
        self.reviews, self.review_origin, self.ingest_rejects = result.frame, result.origin, result.rejected
        self.fingerprint = result.fingerprint
        self.next(self.validate)

    @step
    def validate(self):
        from flowkit.data_steps import validate_step

        report = validate_step(self)
        self.clean, self.validation = report.clean, report.metrics()
        self.next(self.split)

    @step
    def split(self):
        from flowkit.metaflow_internals import settled
        from flowkit.step_runs import step_run
        from steps.data.split import split_reviews
        from steps.evaluation import studies
        from steps.runtime.errors import ReviewflowError

        with step_run(self, "split") as run:
            self.split_data = settled(split_reviews(self.clean, seed=self.seed))  # stored once, not per worker
            run.metrics({f"{name}_rows": n for name, n in self.split_data.sizes().items()})
            if not len(self.split_data.validation):
                raise ReviewflowError(f"{self.data}: no validation rows after the split, and trials are scored "
                                      "on them; give more reviews")
            key = studies.StudyKey(self.base_model, f"{self.figure} ({self.direction})", self.fingerprint,
                                   fixed_settings(self.base_values, self.held, self.search_space))
            study = studies.open_study(studies.study_storage(self.storage, self.tracking_uri), self.study_name, key,
                                       self.direction, self.space_json, self.search_space)
            print(f"Split: {self.split_data.sizes()}.\n" + studies.progress_line(study, self.trials, self.figure))
        self.worker_ids = list(range(self.workers))
        self.next(self.worker, foreach="worker_ids")

    @resources(gpu=1, cpu=4, memory=16000)  # a worker trains as ReviewFlow's train step does (on Kubernetes: a pod)
    @step
    def worker(self):
        import time

        from flowkit.events import side_by_side
        from steps.evaluation import studies, tune
        from steps.runtime import threads, tracking

        study = studies.load_study(studies.study_storage(self.storage, self.tracking_uri), self.study_name,
                                seed=self.seed * 1000 + 101 * self.input, budget=self.trials)
        recorder = tune.TrialRecorder(tracking.client(self.tracking_uri), self.mlflow_run_id, self.study_name,
                                      self.input, current.pathspec)
        deadline = time.time() + self.timeout_seconds if self.timeout_seconds else float("inf")
        frames = {"train": self.split_data.train, "validation": self.split_data.validation}
        # the lease: this worker's share of the cores; closing_flow_run: a crash marks the MLflow run FAILED and
        # prints how to resume (the study keeps every finished trial)
        with closing_flow_run(self), threads.lease(siblings=side_by_side(len(self.worker_ids))):
            print(f"worker {self.input}: {threads.describe()}", flush=True)
            work = tune.Worker(study, self.search_space, self.held, self.base_values, frames, self.base_model,
                               self.trials, deadline, self.figure, log_trial=recorder,
                               log=lambda line: print(f"[worker {self.input}] {line}", flush=True))
            self.ran = work.run()
        self.kept = work.kept
        if self.kept is not None:  # where its weights are, for a later run whose best this trial still is
            study.set_user_attr(f"weights.{self.kept.trial}", current.pathspec)
        self.next(self.join)

    @step
    def join(self, inputs):
        # the split served the workers; a task that read it stores it again, which merge_artifacts calls a conflict
        self.merge_artifacts(inputs, exclude=["ran", "kept", "split_data"])
        self.ran = sorted(n for i in inputs for n in i.ran)
        kept = [i.kept for i in inputs if i.kept is not None]
        # the best, and of equal ones the first trial: as studies.best_trial picks from the study
        self.kept = (max(kept, key=lambda k: (k.value, -k.trial)) if self.direction == "maximize"
                     else min(kept, key=lambda k: (k.value, k.trial))) if kept else None
        self.split_data = inputs[0].split_data
        self.next(self.end)

    @card(type="blank", id="tuning")
    @step
    def end(self):
        with closing_flow_run(self):
            self.finish()

    def finish(self):
        """The end step's work: the best trial tested once, the card, MLflow, and --train-best."""
        from flowkit.cards.tuning import tuning_card
        from steps.evaluation import studies, tune, tune_report
        from steps.evaluation.compare import review_flow_command_for
        from steps.evaluation.metrics import interval_line
        from steps.runtime import tracking

        study = studies.load_study(studies.study_storage(self.storage, self.tracking_uri), self.study_name)
        rows = tune_report.trial_rows(study, self.figure)
        maximize = self.direction == "maximize"
        best = studies.best_trial(study)
        run = tracking.StepRun(tracking.client(self.tracking_uri), self.mlflow_run_id)
        self.trial_rows, self.best, self.test_metrics, self.train_command = rows, None, None, None
        lines = tune_report.table_lines(rows, self.figure, maximize, self.search_space)
        found, why_none = tune_report.importances(study, self.seed)
        self.importances = found
        if best is not None:
            values = tune_report.best_values(best, self.held, self.base_values, self.base_model)
            frames = {"train": self.split_data.train, "validation": self.split_data.validation}
            kept, where = tune.weights_of(best.number, self.kept, study, frames, self.base_model, values,
                                          find=kept_by_task)
            print(f"The best trial, {best.number}: weights {where}; scoring the test rows once.", flush=True)
            self.test_metrics = tune_report.score_on_test(kept.classifier, self.split_data.test, kept.max_length)
            self.train_command = review_flow_command_for(values)
            self.best = {"trial": best.number, "value": best.value, "params": dict(best.params), "values": values,
                         "weights": where}
            run.metrics({f"best_{self.figure}": best.value, "best_trial": best.number,
                         **{f"test_{k}": v for k, v in self.test_metrics.items() if isinstance(v, (int, float))}})
            run.tags({"best_trial": str(best.number), "train_command": self.train_command})
        noise = tune_report.validation_noise(self.figure, best.value if best else None,
                                             len(self.split_data.validation))
        counts = studies.counts(study)
        run.metrics({"trials_complete": counts.complete, "trials_pruned": counts.pruned,
                     "trials_failed": counts.failed})
        history = tune_report.history_plot(rows, self.figure, maximize)
        importance = tune_report.importance_plot(found)
        run.json(rows, "tuning/trials.json")
        run.json({"importances": found, "space": self.space_json}, "tuning/importances.json")
        run.text("\n".join(lines), "tuning/best_trials.txt")
        run.image(history, "tuning/history.png")
        if importance:
            run.image(importance, "tuning/importances.png")
        run.flush()
        current.card["tuning"].extend(tuning_card(
            self.study_name, counts, self.trials, rows, self.figure, maximize, self.search_space, self.held,
            self.best, self.test_metrics, history, importance, found, why_none, self.train_command, noise))
        self.train_best_run = None
        if self.train_best and self.best is not None:
            self.train_best_run = train_best(self.best["values"], self.study_name)
        tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id, outcome="tuned")
        print("\n".join(
            ["", f"=== {current.flow_name}/{current.run_id}: {studies.progress_line(study, self.trials, self.figure)}"
             " ===", *lines, ""]
            + ([f"best: trial {best.number}, validation {self.figure.removeprefix('val_')} {best.value:.4f}; on the "
                f"{self.test_metrics['rows']} test rows (scored once): accuracy {self.test_metrics['accuracy']:.4f}, "
                f"F1 {self.test_metrics['f1']:.4f}", interval_line(self.test_metrics) or "",
                *([f"mind the noise: {noise}"] if noise else []), f"train it: {self.train_command}"]
               if best is not None else ["no trial finished"])
            + ([f"trained with ReviewFlow: {self.train_best_run}"] if self.train_best_run else [])
            + [f"card: python flows/tune_flow.py card view {current.run_id}/end"]))


def fixed_settings(base: dict, held: dict, space) -> str:
    """JSON of the training settings (and max-length) the search does not range over, as the trials train with
    them: part of what a later run must share to continue the study."""
    import json

    from steps import settings as catalog

    searched = {d.name for d in space}
    values = {**base, **held}
    return json.dumps({s.name: values[s.name] for s in catalog.select("training", "max-length")
                       if s.name not in searched and s.name in values}, sort_keys=True)


def kept_by_task(pathspec: str):
    """The trial a worker task of an earlier run kept (its best, with weights), read with the Metaflow client."""
    from metaflow import Task, namespace

    namespace(None)
    return Task(pathspec).data.kept


def train_best(values: dict, study: str) -> str:
    """Run ReviewFlow with the best recipe, tagged with the study; its output is shown here. A failure raises."""
    from flowkit.events import run_review_flow
    from steps import settings as catalog
    from steps.evaluation.compare import review_flow_options
    from steps.runtime.errors import ReviewflowError

    params = {catalog.BY_NAME[name].attr: value for name, value in review_flow_options(values).items()}
    pathspec, status, results = run_review_flow(
        {**params, "tags": [f"study:{study}", f"tuned_by:{current.flow_name}/{current.run_id}"]})
    if status != "successful":
        raise ReviewflowError(f"{pathspec or 'ReviewFlow'} (the best recipe) ended {status}; its output is above")
    registration = results.get("registration") or {}
    version = f", version {registration.get('version')}" if registration else ""
    return f"{pathspec} ({results.get('route')}{version})"


if __name__ == "__main__":
    from steps.evaluation.studies import refuse_password_option

    main(TuneFlow, refuse=refuse_password_option)  # a password in --storage is refused before the run is stored
