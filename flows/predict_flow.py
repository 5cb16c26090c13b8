"""PredictFlow: batch-score reviews with a registered model (by default the champion), in parallel shards.

    python flows/predict_flow.py run --data reviews.csv --output preds.csv
    python flows/predict_flow.py run --data s3://bucket/new/ --text-column body --output s3://bucket/preds/ --shards 8

start (check the options, pin the model version, plan the shards) -> predict (a foreach: each shard streams its
records in bounded chunks, scores them, GPU when present, and writes Parquet parts) -> write (a directory of the
parts plus manifest.json, or one file in input order) -> end. The input is read like ReviewFlow's --data (same
formats, compression, encodings, s3://, same errors), but only the text column is required. Each output row
carries its row id (source_file, source_row), the input's contract columns, label (1 = positive, empty when the
row cannot be scored), probability_positive, unscored_reason (missing_text, blank_text, repeated_header; empty
when scored) and model_name / model_version. `resume` re-runs only the shards that failed. With
REVIEWFLOW_INFERENCE_LOG set, every scored text also goes to the inference log that MonitorFlow reads
(docs/monitoring.md). With `--explain K` each row also carries top_tokens (steps/evaluation/explain.py).
"""
from metaflow import FlowSpec, Parameter, config_expr, current, project, resources, step

from flowkit.launch import main
from flowkit.packaging import ship_library
from flowkit.parameters import flow_parameters, settings
from flowkit.project import deploy_config

INFERENCE_LOG_COUNTS = ("records_logged", "records_written", "records_dropped", "failed_writes", "batches_written",
                        "pending")


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
                       help="Where to write the scored rows: a file (a local path or s3://bucket/key) ending in .csv, "
                            ".parquet or .jsonl (.csv/.jsonl may add .gz/.bz2/.xz), written in input order; or a "
                            "directory (local or s3://bucket/prefix/, ending in /): Parquet parts and manifest.json, "
                            "for inputs too large for one file.")
    model_uri = Parameter("model-uri", default="",
                          help="Model to score with: models:/<name>@<alias>, models:/<name>/<version>, or any "
                               "MLflow model URI; empty = the champion of this branch's registered model "
                               "(--production: of --registered-model). Aliases are pinned to a version first.")
    batch_size = Parameter("batch-size", default=64, type=int, help="Reviews per forward pass.")
    explain = Parameter("explain", default=0, type=int,
                        help="Add a top_tokens column: the K most influential words of every review with signed "
                             "scores (positive = toward positive), by Layer Integrated Gradients for a transformer, "
                             "exact contributions for the TF-IDF baseline. 0 = no explanations.")
    shards = Parameter("shards", default=1, type=int,
                       help="Score in K parallel tasks (a foreach; parallel pods on Argo): with at least K input files "
                            "each shard takes whole files, else each takes every K-th chunk of records. Each task "
                            "streams its records in bounded chunks; `resume` re-runs only failed shards.")

    @step
    def start(self):
        from steps.data.mapping import IngestOptions
        from steps.lifecycle.environments import registered_model_name
        from steps.lifecycle.predict import check_output_location, resolve_model_uri
        from steps.lifecycle.shards import READ_ROWS, first_chunk_check, parts_folder, plan_shards
        from steps.runtime import tracking
        from steps.runtime.errors import ReviewflowError

        self.output_kind = check_output_location(self.output)
        options = IngestOptions.from_parameters(text_column=self.text_column, encoding=self.encoding)
        if self.explain < 0 or (self.explain and self.explain_steps < 2):
            raise ReviewflowError(f"--explain must be 0 or more (got {self.explain}), and with --explain, "
                                  f"--explain-steps at least 2 (got {self.explain_steps})")
        self.plan = plan_shards(self.data, self.shards)
        first_chunk_check(self.data, options)
        self.parts_folder = parts_folder(self.output, self.output_kind, current.run_id)
        self.tracking_uri = tracking.resolve_tracking_uri()
        branch_model = registered_model_name(self.registered_model, current.branch_name)
        asked = self.model_uri or f"models:/{branch_model}@champion"
        self.model = resolve_model_uri(tracking.client(self.tracking_uri), asked).__dict__
        self.mlflow_run_id = tracking.start_flow_run(
            self.tracking_uri, current.flow_name, current.run_id, flow_parameters(self),
            tags={"model_uri": self.model["uri"]})
        inputs = len(self.plan[0]["sources"])
        print(f"Scoring {self.data} ({inputs} input{'s' * (inputs != 1)}) with {self.model['uri']} (asked for "
              f"{asked}) in {self.shards} shard{'s' * (self.shards != 1)}"
              + (f", each scoring one in {self.shards} chunks of {READ_ROWS:,} records" if self.plan[0]["striped"]
                 and self.shards > 1 else "") + ".")
        self.next(self.predict, foreach="plan")

    @resources(gpu=1, cpu=4, memory=16000)
    @step
    def predict(self):
        import time

        from flowkit.events import side_by_side
        from flowkit.step_runs import fault_point
        from steps.data.mapping import IngestOptions
        from steps.lifecycle.predict import ResolvedModel, load_model
        from steps.lifecycle.shards import score_shard
        from steps.runtime import faults, threads, tracking
        from steps.serving.inference_log import InferenceLog

        shard = self.input
        resolved = ResolvedModel(**self.model)
        options = IngestOptions.from_parameters(text_column=self.text_column, encoding=self.encoding)
        tracking.client(self.tracking_uri)  # points MLflow (registry included) at the flow's store
        # shards side by side share this machine's cores, each from its first thread on (its onnxruntime session
        # cannot be resized later); on Argo each shard is a pod with its own CPU quota
        with threads.lease(siblings=side_by_side(shard["of"])):
            fault_point()
            started = time.perf_counter()
            model = load_model(resolved, self.batch_size)
            loaded = time.perf_counter() - started
            inference_log = InferenceLog.from_env()
            if inference_log is not None:
                print(f"Inference log: {inference_log.location} ({inference_log.format})")
            faults.inject(f"predict/shard_{shard['index']}")
            self.result = score_shard(model, shard, options, resolved, self.parts_folder, self.text_column,
                                      inference_log, (self.explain, self.explain_steps) if self.explain else None)
        self.result["model_load_seconds"] = round(loaded, 3)
        self.result["inference_log"] = inference_log.close() if inference_log is not None else None
        if inference_log is not None:
            print("Inference log: {records_written} of {records_logged} records written in {batches_written} "
                  "file(s), {failed_writes} failed write(s){more}".format(
                      **self.result["inference_log"], more=f"; last error: {self.result['inference_log']['last_error']}"
                      if self.result["inference_log"]["last_error"] else ""))
        rows = self.result["counts"].get("rows", 0)
        seconds = self.result["scoring_finished"] - self.result["scoring_started"]
        print(f"Shard {shard['index'] + 1}/{shard['of']}: scored {rows} reviews in {seconds:.1f} s "
              f"({rows / seconds if seconds > 0 else 0:,.1f} texts/s; model loaded in {loaded:.1f} s) into "
              f"{len(self.result['parts'])} part(s).")
        self.next(self.write)

    @step
    def write(self, inputs):
        import resource

        from steps.lifecycle.predict import run_summary
        from steps.lifecycle.shards import finish_output
        from steps.runtime import tracking

        self.merge_artifacts(inputs, include=["model", "tracking_uri", "mlflow_run_id", "output_kind"])
        results = [i.result for i in inputs]
        self.summary = run_summary(results)
        self.manifest = finish_output(
            results, self.output, self.output_kind, {"run": f"{current.flow_name}/{current.run_id}",
                                                     "data": self.data, "model": self.model, "shards": len(results),
                                                     "counts": self.summary}, self.text_column)
        run = tracking.StepRun(tracking.client(self.tracking_uri), self.mlflow_run_id)
        run.params({"resolved_model_uri": self.model["uri"], "output_path": self.manifest["output"]})
        run.metrics(self.summary)
        run.json(self.manifest, "predictions/manifest.json")
        logs = [r["inference_log"] for r in results if r["inference_log"]]
        self.inference_log = {  # the shards' logs, added up; the first error any of them met
            **logs[0], **{k: sum(log[k] for log in logs) for k in INFERENCE_LOG_COUNTS},
            "last_error": next((log["last_error"] for log in logs if log["last_error"]), None)} if logs else None
        if logs:
            run.metrics({f"inference_log_{k}": self.inference_log[k]
                         for k in ("records_written", "records_dropped", "failed_writes", "batches_written")})
            run.tags({"inference_log": self.inference_log["location"]})
        run.flush()
        self.write_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # the benches
        self.next(self.end)

    @step
    def end(self):
        from steps.runtime import tracking

        tracking.finish_flow_run(self.tracking_uri, self.mlflow_run_id)
        where = (f"{self.manifest['output']} ({len(self.manifest['parts'])} Parquet part(s) and manifest.json)"
                 if self.output_kind == "directory" else self.manifest["output"])
        print(f"Wrote {self.summary['rows']} rows to {where}: "
              + ", ".join(f"{k} {v}" for k, v in self.summary.items()))
        if self.summary.get("unscored_rows"):
            print(f"{self.summary['unscored_rows']} row(s) could not be scored (no label; the reason is in "
                  "unscored_reason): " + ", ".join(f"{k[len('unscored_'):]} {v}" for k, v in self.summary.items()
                                                   if k.startswith("unscored_") and k != "unscored_rows"))
        print(f"Throughput: {self.summary['texts_per_s']:,.1f} texts/s ({self.summary['scored_rows']} texts in "
              f"{self.summary['scoring_seconds']} s of scoring).")


if __name__ == "__main__":
    main(PredictFlow)
