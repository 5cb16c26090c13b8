"""PredictFlow: batch-score a file of reviews with a registered model (by default the champion).

    python flows/predict_flow.py run --data reviews.csv --output preds.csv
    python flows/predict_flow.py run --data new/ --output preds.parquet --model-uri models:/review-classifier/3

start (read, pin the model version) -> predict (score in batches; GPU when present) -> end (write the file).
The input is read like ReviewFlow's --data, but only `reviewText` is required. Each output row carries the
input columns plus label (1 = positive), probability_positive (softmax) and model_name / model_version; with
`--explain K` also top_tokens: the K most influential words with signed scores (steps/evaluation/explain.py).
"""
from metaflow import FlowSpec, Parameter, current, resources, step

from flowkit.launch import main
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, settings


@ship_library
@settings("explain-steps")
class PredictFlow(FlowSpec):
    data = Parameter("data", required=True,
                     help="Reviews to score: a CSV/TSV/Parquet/JSONL file, a directory of them, or sample:amazon. "
                          "Needs a reviewText column; isPositive is optional (then accuracy is reported).")
    output = Parameter("output", default="predictions.csv",
                       help="Where to write the scored rows: .csv, .parquet or .jsonl (relative to the current "
                            "directory).")
    model_uri = Parameter("model-uri", default="models:/review-classifier@champion",
                          help="Model to score with: models:/<name>@<alias>, models:/<name>/<version>, or any "
                               "MLflow model URI. Aliases are pinned to a version before scoring.")
    batch_size = Parameter("batch-size", default=64, type=int, help="Reviews per forward pass.")
    explain = Parameter("explain", default=0, type=int,
                        help="Add a top_tokens column: the K most influential words of every review with signed "
                             "scores (positive = toward positive), by Layer Integrated Gradients for a transformer, "
                             "exact contributions for the TF-IDF baseline. 0 = no explanations.")

    @step
    def start(self):
        from steps.data.ingest import load_texts
        from steps.lifecycle.predict import check_output, resolve_model_uri
        from steps.runtime import tracking

        check_output(self.output)
        if self.explain < 0 or (self.explain and self.explain_steps < 2):
            from steps.runtime.errors import ReviewflowError

            raise ReviewflowError(f"--explain must be 0 or more (got {self.explain}), and with --explain, "
                                  f"--explain-steps at least 2 (got {self.explain_steps})")
        self.tracking_uri = tracking.resolve_tracking_uri()
        self.model = resolve_model_uri(tracking.client(self.tracking_uri), self.model_uri).__dict__
        self.reviews = load_texts(self.data)
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id, flow_parameters(self),
            tags={"model_uri": self.model["uri"]})
        print(f"Scoring {len(self.reviews)} reviews from {self.data} with {self.model['uri']} "
              f"(asked for {self.model_uri}).")
        self.next(self.predict)

    @resources(gpu=1, cpu=4, memory=16000)
    @step
    def predict(self):
        from steps.lifecycle.predict import ResolvedModel, load_model, predict_frame, prediction_summary
        from steps.runtime import tracking

        resolved = ResolvedModel(**self.model)
        tracking.client(self.tracking_uri)  # points MLflow (registry included) at the flow's store
        model = load_model(resolved, self.batch_size)
        self.predictions = predict_frame(model, self.reviews, resolved)
        self.summary = prediction_summary(self.predictions)
        if self.explain:
            from schemas import TEXT_COLUMN
            from steps.evaluation.explain import explain_frame

            column, cost = explain_frame(model, self.predictions[TEXT_COLUMN].fillna("").astype(str).tolist(),
                                         self.explain, self.explain_steps)
            self.predictions["top_tokens"] = column
            self.summary.update({f"explain_{k}": v for k, v in cost.items()})
        self.next(self.end)

    @step
    def end(self):
        from steps.lifecycle.predict import write_predictions
        from steps.runtime import tracking

        path = write_predictions(self.predictions, self.output)
        run = tracking.StepRun(tracking.client(self.tracking_uri), self.mlflow_run_id)
        run.params({"resolved_model_uri": self.model["uri"], "output_path": path})
        run.metrics(self.summary)
        run.flush()
        tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id)
        print(f"Wrote {len(self.predictions)} rows to {path}: "
              + ", ".join(f"{k} {v}" for k, v in self.summary.items()))


if __name__ == "__main__":
    main(PredictFlow)
