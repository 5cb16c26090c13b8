"""PredictFlow: batch-score a file of reviews with a registered model (by default the champion).

    python flows/predict_flow.py run --data reviews.csv --output preds.csv
    python flows/predict_flow.py run --data s3://bucket/new/ --text-column body --output s3://bucket/preds.parquet

start (read, pin the model version) -> predict (score in batches; GPU when present) -> end (write the output).
The input is read like ReviewFlow's --data (same formats, compression, encodings, s3://, same errors), but only the
text column is required. Each output row carries the input's contract columns plus label (1 = positive),
probability_positive (softmax) and model_name / model_version. With REVIEWFLOW_INFERENCE_LOG set, every scored text
also goes to the inference log that MonitorFlow reads (docs/monitoring.md). With `--explain K` each row also
carries top_tokens: the K most influential words with signed scores (steps/evaluation/explain.py).
"""
from metaflow import FlowSpec, Parameter, config_expr, current, project, resources, step

from flowkit.launch import main
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, settings
from flowkit.project import deploy_config


@ship_library
@settings("registered-model", "text-column", "encoding", "explain-steps")
@project(name=config_expr("deploy.project"))
class PredictFlow(FlowSpec):
    deploy = deploy_config()
    data = Parameter("data", required=True,
                     help="Reviews to score: a CSV/TSV/Parquet/JSONL file (CSV/TSV/JSONL optionally .gz/.bz2/.xz), a "
                          "directory of them, s3://bucket/key or s3://bucket/prefix/, or sample:amazon. Needs the "
                          "text column; isPositive is optional (then accuracy is reported).")
    output = Parameter("output", default="predictions.csv",
                       help="Where to write the scored rows: a local path (relative to the current directory) or "
                            "s3://bucket/key, ending in .csv, .parquet or .jsonl (.csv/.jsonl may add .gz/.bz2/.xz).")
    model_uri = Parameter("model-uri", default="",
                          help="Model to score with: models:/<name>@<alias>, models:/<name>/<version>, or any "
                               "MLflow model URI; empty = the champion of this branch's registered model "
                               "(--production: of --registered-model). Aliases are pinned to a version first.")
    batch_size = Parameter("batch-size", default=64, type=int, help="Reviews per forward pass.")
    explain = Parameter("explain", default=0, type=int,
                        help="Add a top_tokens column: the K most influential words of every review with signed "
                             "scores (positive = toward positive), by Layer Integrated Gradients for a transformer, "
                             "exact contributions for the TF-IDF baseline. 0 = no explanations.")

    @step
    def start(self):
        from steps.data.ingest import load_texts
        from steps.data.mapping import IngestOptions
        from steps.lifecycle.environments import registered_model_name
        from steps.lifecycle.predict import check_output_location, resolve_model_uri
        from steps.runtime import tracking

        check_output_location(self.output)
        options = IngestOptions.from_parameters(text_column=self.text_column, encoding=self.encoding)
        if self.explain < 0 or (self.explain and self.explain_steps < 2):
            from steps.runtime.errors import ReviewflowError

            raise ReviewflowError(f"--explain must be 0 or more (got {self.explain}), and with --explain, "
                                  f"--explain-steps at least 2 (got {self.explain_steps})")
        self.tracking_uri = tracking.resolve_tracking_uri()
        branch_model = registered_model_name(self.registered_model, current.branch_name)
        asked = self.model_uri or f"models:/{branch_model}@champion"
        self.model = resolve_model_uri(tracking.client(self.tracking_uri), asked).__dict__
        self.reviews = load_texts(self.data, options)
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id, flow_parameters(self),
            tags={"model_uri": self.model["uri"]})
        print(f"Scoring {len(self.reviews)} reviews from {self.data} with {self.model['uri']} "
              f"(asked for {asked}).")
        self.next(self.predict)

    @resources(gpu=1, cpu=4, memory=16000)
    @step
    def predict(self):
        import time

        from steps.lifecycle.predict import ResolvedModel, load_model, predict_frame, prediction_summary
        from steps.runtime import tracking
        from steps.serving.inference_log import InferenceLog

        resolved = ResolvedModel(**self.model)
        tracking.client(self.tracking_uri)  # points MLflow (registry included) at the flow's store
        started = time.perf_counter()
        model = load_model(resolved, self.batch_size)
        loaded = time.perf_counter()
        inference_log = InferenceLog.from_env()
        if inference_log is not None:
            print(f"Inference log: {inference_log.location} ({inference_log.format})")
        self.predictions = predict_frame(model, self.reviews, resolved, inference_log=inference_log)
        scored = time.perf_counter() - loaded
        self.summary = {**prediction_summary(self.predictions), "scoring_seconds": round(scored, 3),
                        "texts_per_s": round(len(self.predictions) / scored, 2) if scored > 0 else 0.0,
                        "model_load_seconds": round(loaded - started, 3)}
        if self.explain:
            from schemas import TEXT_COLUMN
            from steps.evaluation.explain import explain_frame

            column, cost = explain_frame(model, self.predictions[TEXT_COLUMN].fillna("").astype(str).tolist(),
                                         self.explain, self.explain_steps)
            self.predictions["top_tokens"] = column
            self.summary.update({f"explain_{k}": v for k, v in cost.items()})
        self.inference_log = None
        if inference_log is not None:
            self.inference_log = inference_log.close()
            print("Inference log: {records_written} of {records_logged} records written in {batches_written} "
                  "file(s), {failed_writes} failed write(s){more}".format(
                      **self.inference_log, more=f"; last error: {self.inference_log['last_error']}"
                      if self.inference_log["last_error"] else ""))
        print(f"Scored {len(self.predictions)} reviews in {scored:.1f} s: {self.summary['texts_per_s']:,.1f} "
              f"texts/s (model loaded in {loaded - started:.1f} s).")
        self.next(self.end)

    @step
    def end(self):
        from steps.lifecycle.predict import output_frame, write_predictions
        from steps.runtime import tracking

        path = write_predictions(output_frame(self.predictions, self.text_column), self.output)
        run = tracking.StepRun(tracking.client(self.tracking_uri), self.mlflow_run_id)
        run.params({"resolved_model_uri": self.model["uri"], "output_path": path})
        run.metrics(self.summary)
        if self.inference_log is not None:
            run.metrics({f"inference_log_{k}": v for k, v in self.inference_log.items()
                         if k in ("records_written", "records_dropped", "failed_writes", "batches_written")})
            run.tags({"inference_log": self.inference_log["location"]})
        run.flush()
        tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id)
        print(f"Wrote {len(self.predictions)} rows to {path}: "
              + ", ".join(f"{k} {v}" for k, v in self.summary.items()))
        print(f"Throughput: {self.summary['texts_per_s']:,.1f} texts/s ({self.summary['rows']} texts in "
              f"{self.summary['scoring_seconds']} s of scoring).")


if __name__ == "__main__":
    main(PredictFlow)
