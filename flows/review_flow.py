"""ReviewFlow: fine-tune a pretrained transformer to classify product reviews, and register it in MLflow.

    python flows/review_flow.py run                      # sample:amazon, packaged MiniLM, local + SQLite
    python flows/review_flow.py run --data reviews.csv --model distilbert-base-uncased --epochs 3

start -> ingest -> validate -> split -> tokenize -> train -> evaluate -> register -> end.
Each step calls the library in steps/ and logs a nested MLflow run under the flow run's run. The options are the
settings of steps/settings.py (`run --help` lists them). Retry policy: docs/when-things-break.md.
"""
from metaflow import FlowSpec, card, config_expr, current, project, resources, retry, schedule, step, trigger

from flowkit.checkpoints import (
    clear_training_checkpoints,
    store_trained_classifier,
    trained_classifier,
    training_checkpoints,
)
from flowkit.launch import main
from flowkit.metaflow_internals import datastore_root, render_card_now, settled
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, setting_values, settings
from flowkit.project import deploy_config
from flowkit.step_runs import closing_flow_run, fault_point, step_run


@ship_library
@settings("data", "model", "training", "gate", "serving", "registry", "explain")
@project(name=config_expr("deploy.project"))
@schedule(cron=config_expr("deploy.schedule"))  # used once deployed (Argo Workflows / Step Functions)
@trigger(event=config_expr("deploy.event"))  # retrain when new reviews land (Argo Events)
class ReviewFlow(FlowSpec):
    deploy = deploy_config()

    @retry(times=0)
    @step
    def start(self):
        from steps import settings
        from steps.data.ingest import check_data_option
        from steps.lifecycle.environments import describe, registered_model_name
        from steps.runtime import tracking
        from steps.training.auto_model import choose_model, recipe_values
        from steps.training.config import TrainConfig
        from steps.training.models import check_max_length

        fault_point()
        settings.check(setting_values(self, *settings.GROUPS))  # also when started other than from the CLI
        check_data_option(self.data)  # a local path that is not there fails here, before any work
        choice = choose_model(self.model, train_step_capabilities())
        self.model_choice, self.base_model = choice.as_dict(), choice.model  # what this run trains, and why
        self.resolved_settings = {"model": choice.model,
                                  "epochs": recipe_values(choice.model, {"epochs": self.epochs})["epochs"]}
        check_max_length(self.base_model, self.max_length)  # before any data is read, not deep in the encoder
        self.train_config = TrainConfig.from_values(setting_values(self, "training"))
        self.model_name = registered_model_name(self.registered_model, current.branch_name)  # this branch's model
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id,
            {**flow_parameters(self), **{f"{k}.resolved": v for k, v in self.resolved_settings.items()},
             "model.why": choice.why}, tags=user_tags())
        rows = "all rows" if not self.max_rows else f"{self.max_rows} rows"
        epochs = self.train_config.epochs
        print(f"Model: {self.base_model} ({choice.why}{'; ' + choice.machine if choice.machine else ''}).\n"
              f"Plan: fine-tune {self.base_model} on {rows} of {self.data} for {epochs} epoch(s)"
              f"{' (its recipe: --epochs 0)' if not self.epochs else ''}, batch {self.batch_size}, "
              f"lr {self.learning_rate}, max_length {self.max_length}, seed {self.seed}.\n"
              f"MLflow: {self.tracking_uri} (run {self.mlflow_run_id}); registers into "
              f"{describe(self.registered_model, current.branch_name)}.")
        self.next(self.ingest)

    @retry(times=2, minutes_between_retries=1)
    @step
    def ingest(self):
        from steps.data.ingest import ingest_reviews
        from steps.data.mapping import IngestOptions

        with step_run(self, "ingest") as run:
            options = IngestOptions.from_parameters(self.text_column, self.label_column, self.positive_values,
                                                    self.negative_values, self.positive_if, self.encoding)
            result = ingest_reviews(run, self.mlflow_run_id, self.data, self.max_rows, self.seed, options)
        # settled: as the later steps read them back, so Metaflow stores the reviews once, not again per reader
        self.reviews, self.fingerprint, self.ingest_summary = settled(result.frame), result.fingerprint, \
            result.summary()
        self.review_origin, self.ingest_rejects = settled(result.origin), settled(result.rejected)
        self.next(self.validate)

    @retry(times=0)
    @card(type="blank", id="validation")
    @step
    def validate(self):
        from flowkit.cards.validation import validation_card
        from steps.data.drift import require_no_drift
        from steps.data.validate import require_valid, run_data_checks
        from steps.lifecycle import retrain
        from steps.training.models import load_tokenizer

        with step_run(self, "validate") as run:
            report, drift = run_data_checks(run, self.reviews, self.review_origin, self.ingest_rejects,
                                            self.max_bad_fraction, self.model_name, self.seed, load_tokenizer)
            current.card.extend(validation_card(report, drift, run.run_id, self.fail_on_drift))
            render_card_now("validation")  # a card also for a run that fails below
            require_valid(report, self.data)
            print(drift.describe())
            require_no_drift(drift, self.fail_on_drift)
            self.training_inputs = retrain.training_inputs(self.fingerprint, setting_values(self, *retrain.GROUPS))
            decision = retrain.should_retrain(run.client, self.model_name, self.training_inputs, self.force_retrain,
                                              why={"model": model_choice(self)["why"]})
            run.tags({"retrain": decision.route, "retrain_reason": decision.reason})
        # the clean rows as positions in self.reviews: the datastore keeps the reviews once (split likewise)
        self.clean_rows, self.quarantine, self.validation = report.clean_rows, report.quarantine, report.metrics()
        self.drift, self.retrain_reason, self.route = drift.as_dict(), decision.reason, decision.route
        print(f"Validation passed: {len(report.clean)} clean rows, {report.quarantined} quarantined.\n"
              f"{'Training' if decision.retrain else 'Not training'}: {decision.reason}")
        self.next({"train": self.split, "unchanged": self.end}, condition="route")

    @retry(times=0)
    @step
    def split(self):
        from steps.data.split import split_reviews
        from steps.data.validate import rows_of

        with step_run(self, "split") as run:
            parts = split_reviews(rows_of(self.reviews, self.clean_rows), seed=self.seed)
            run.metrics({f"{name}_rows": n for name, n in parts.sizes().items()})
        self.split_rows = {name: self.clean_rows[rows] for name, rows in parts.rows.items()}  # positions in reviews
        self.split_sizes = parts.sizes()
        print(f"Split (grouped by review, stratified): {parts.sizes()}")
        self.next(self.tokenize)

    @retry(times=0)
    @step
    def tokenize(self):
        from steps.training.tokenize import tokenize_and_profile

        with step_run(self, "tokenize") as run:
            frames = split_frames(self, "train", "validation", "test")
            self.tokens, self.token_stats, self.training_profile = tokenize_and_profile(
                run, frames, base_model(self), self.max_length)
        print(f"Tokenized: train length mean {self.token_stats['train']['length_mean']}, "
              f"p95 {self.token_stats['train']['length_p95']}.")
        self.next(self.train)

    @card(type="blank", id="training")
    @retry(times=1, minutes_between_retries=0)  # a retry continues from the last epoch checkpoint
    @resources(gpu=1, cpu=4, memory=16000)
    @step
    def train(self):
        from flowkit.cards.training import training_card
        from steps.training.job import fine_tune

        with step_run(self, "train") as run:
            result, classifier, plots = fine_tune(run, base_model(self), self.tokens, self.train_config,
                                                  training_checkpoints(self))
            self.classifier = store_trained_classifier(self, classifier)  # where it is + SHA-256, not gzipped
        self.train_summary, self.history = result.summary(), result.history
        self.step_history, self.oom_events = result.step_history, result.oom_events  # compact: <= 1000 points
        current.card["training"].extend(training_card(result, self.train_config, plots))
        self.trained_by = current.pathspec  # names this model: a retried or resumed register finds its version
        self.next(self.evaluate)  # evaluate deletes the checkpoint: by then the classifier and its artifact are stored

    @retry(times=1, minutes_between_retries=1)
    @card(type="blank", id="evaluation")
    @step
    def evaluate(self):
        from flowkit.cards.evaluation import evaluation_card
        from flowkit.cards.explanations import explanations_section
        from steps.evaluation.baseline import evaluate_baseline
        from steps.evaluation.evaluate import evaluate_served_model
        from steps.evaluation.explain import explain_test_reviews
        from steps.serving.package import ParityRules
        from steps.training.models import loaded

        with step_run(self, "evaluate") as run, loaded(trained_classifier(self, self.classifier)) as model:  # once
            clear_training_checkpoints(self, self.trained_by)  # only now: a model found gone keeps its checkpoint
            frames = split_frames(self, "train", "test")
            baseline = evaluate_baseline(run, frames["train"], frames["test"], self.seed)  # TF-IDF, same rows
            evaluation, verdict, served = evaluate_served_model(
                run, self.mlflow_run_id, model, self.tokens["test"], frames["test"], self.history,
                self.model_name, max_length=self.max_length, trained_by=self.trained_by,
                gate_settings=setting_values(self, "gate", exclude=("promote",), python_names=True),
                serving_backend=self.serving_backend, cuda_precision=self.train_summary["precision"],
                baseline_f1=baseline.metrics["f1"],
                parity_rules=ParityRules(int8_max_drop=self.int8_max_drop, int8_max_flipped=self.int8_max_flipped))
            self.explanations = explain_test_reviews(run, model, frames["test"], evaluation.probabilities,
                                                     evaluation.confident_errors, self.max_length,
                                                     self.explain_steps, self.seed)
        self.served_model = served.__dict__  # the logged model that was scored: register registers exactly it
        self.baseline = baseline.summary()
        self.gate_verdict = verdict.as_dict()  # plain data: readable with the Metaflow client anywhere
        self.test_probabilities, self.test_metrics = evaluation.probabilities, evaluation.metrics
        self.test_slices, self.champion_comparison = evaluation.slices, evaluation.comparison
        current.card["evaluation"].extend(evaluation_card(evaluation, verdict, self.baseline))
        current.card["evaluation"].extend(explanations_section(self.explanations))
        print("\n".join(evaluation.summary_lines(verdict)))
        self.next(self.register)

    @retry(times=1, minutes_between_retries=1)  # idempotent: a retry finds the version instead of adding one
    @step
    def register(self):
        from steps.lifecycle.registry import register_trained_model
        from steps.serving.package import ServedModel

        served = ServedModel(**self.served_model)
        with step_run(self, "register") as run:
            registration = register_trained_model(
                run, self.model_name, served.model_uri, metaflow_run=f"{current.flow_name}/{current.run_id}",
                trained_by=self.trained_by, serving_tags=served.tags(), data_fingerprint=self.fingerprint,
                base_model=base_model(self), training_inputs=self.training_inputs, test_metrics=self.test_metrics,
                verdict=self.gate_verdict, promote_mode=self.promote, training_profile=self.training_profile)
        self.registration = registration.__dict__
        self.next(self.end)

    @retry(times=1, minutes_between_retries=1)
    @step
    def end(self):
        from steps.lifecycle.report import close_flow_run

        with closing_flow_run(self):
            trained = self.route != "unchanged"
            self.run_summary = close_flow_run(
                f"{current.flow_name}/{current.run_id}", __file__, self.tracking_uri, self.mlflow_run_id,
                datastore_root(self), self.validation, self.retrain_reason,
                *((self.split_sizes, self.test_metrics, self.champion_comparison, self.registration,
                   self.gate_verdict["champion_version"]) if trained else ()),
                registered_model=self.registered_model, branch=current.branch_name,
                served=self.served_model if trained else None, baseline=self.baseline if trained else None,
                model_choice={**model_choice(self), "epochs": self.train_config.epochs})
            print(self.run_summary)


def split_frames(flow, *names: str) -> dict:
    """The rows of the named splits (train, validation, test), from the one stored copy of the reviews."""
    from steps.data.validate import stored_split

    return {name: stored_split(flow, name) for name in names}


def base_model(flow) -> str:
    """The model this run trains: `--model auto` resolved in start (a run started before there was an auto, and
    resumed now, trains its --model as given)."""
    return getattr(flow, "base_model", None) or flow.model


def model_choice(flow) -> dict:
    return getattr(flow, "model_choice", None) or {"requested": flow.model, "model": flow.model,
                                                   "why": f"--model {flow.model} given", "machine": ""}


def user_tags() -> dict:
    """The run's `--tag key:value` Metaflow tags as MLflow tags (TuneFlow's --train-best names its study so)."""
    import re

    pairs = (str(tag).partition(":") for tag in current.tags or ())
    return {key: value for key, _, value in pairs if value and re.fullmatch(r"[A-Za-z][\w.-]{0,63}", key)
            and not key.lower().startswith(("metaflow", "mlflow"))}


def train_step_capabilities():
    """What `--model auto` may count on where the train step runs: on Argo Workflows (Kubernetes) its
    @resources(gpu=1) gives it a GPU this start step does not see; elsewhere the steps share this machine (None:
    look at it)."""
    from flowkit.events import on_argo
    from steps.training.auto_model import Capabilities

    if on_argo():
        return Capabilities(gpu="the train step's @resources(gpu=1) on Kubernetes",
                            about="Argo Workflows: the train step runs in a pod with a GPU")
    return None


if __name__ == "__main__":
    main(ReviewFlow)
