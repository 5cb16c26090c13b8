"""Where the evaluate step's time goes: its calls, outside Metaflow, on a run that pipeline_bench.py kept.

    python tests/bench/pipeline_bench.py --json --keep             # prints the kept folder
    python tests/bench/evaluate_profile.py <kept folder> [--top 40]

Reads the newest successful ReviewFlow run of that folder that trained (its local Metaflow datastore and SQLite
MLflow store), then repeats what the evaluate step does with that run's artifacts, under cProfile: an MLflow run
of its own (experiment `reviewflow-evaluate-profile`, so the flow's runs stay as they were) with a nested step
run, the TF-IDF baseline, logging the served model (ONNX export, int8 quantization, the parity check of every
backend on the test rows, mlflow.pyfunc.log_model), and the explanations, on the classifier loaded once.
The served model is logged under a new `trained_by` and judged against a registered model name nobody uses, so
no champion is scored. Prints seconds per phase (wall time, cProfile's own cost included), then cProfile's top
functions by cumulative time. Imports count where they happen, as in the step's process.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
runpy.run_path(str(ROOT / "flows" / "flowkit" / "__init__.py"))  # puts the library on sys.path, as for the flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a run folder kept by tests/bench/pipeline_bench.py --keep")
    parser.add_argument("--top", type=int, default=40, help="functions to list by cumulative time")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    if not (folder / "mlflow.db").exists():
        parser.error(f"{folder} has no mlflow.db: pass a folder that pipeline_bench.py --keep printed")
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(folder)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("USERNAME", "reviewflow-bench")

    from metaflow import Flow, namespace

    namespace(None)
    data = next((run["evaluate"].task.data for run in Flow("ReviewFlow").runs()  # newest first
                 if run.successful and any(step.id == "evaluate" for step in run)), None)
    if data is None:
        parser.error(f"{folder} has no successful ReviewFlow run that trained (only skip-if-unchanged runs?)")
    uri = f"sqlite:///{folder / 'mlflow.db'}"

    profile = cProfile.Profile()
    marks = [("begin", time.perf_counter())]
    profile.enable()
    from steps.data.validate import stored_split
    from steps.evaluation.baseline import evaluate_baseline
    from steps.evaluation.evaluate import evaluate_served_model
    from steps.evaluation.explain import explain_test_reviews
    from steps.runtime import tracking
    from steps.training.checkpoints import trained_bytes
    from steps.training.models import loaded

    # A parent run of its own (experiment "reviewflow-evaluate-profile"): the kept flow run's MLflow run, its status
    # and its gate tag stay as the flow left them.
    run_id = str(int(time.time()))
    parent = tracking.start_flow_run(uri, "EvaluateProfile", run_id, {"profiled_run": data.mlflow_run_id},
                                     experiment="reviewflow-evaluate-profile")
    with tracking.step_run(uri, parent, "evaluate", f"EvaluateProfile/{run_id}/evaluate/0") as run:
        marks.append(("imports + MLflow step run", time.perf_counter()))
        train_rows, test_rows = stored_split(data, "train"), stored_split(data, "test")
        baseline = evaluate_baseline(run, train_rows, test_rows, data.seed)
        marks.append(("TF-IDF baseline", time.perf_counter()))
        with loaded(trained_bytes(data.classifier, str(folder / ".metaflow"))) as model:  # as the step does: the
            # weights read once, from the kept folder's local datastore
            marks.append(("loading the trained classifier", time.perf_counter()))
            evaluation, _, _ = evaluate_served_model(
                run, parent, model, data.tokens["test"], test_rows, data.history, "reviewflow-evaluate-profile",
                max_length=data.max_length, trained_by=f"evaluate-profile-{time.time()}", gate_settings={},
                serving_backend="auto", cuda_precision="fp32", baseline_f1=baseline.metrics["f1"])
            marks.append(("served model: export, parity, log", time.perf_counter()))
            explain_test_reviews(run, model, test_rows, evaluation.probabilities, evaluation.confident_errors,
                                 data.max_length, data.explain_steps, data.seed)
            marks.append(("explanations", time.perf_counter()))
    profile.disable()
    tracking.finish_flow_run(uri, parent)
    for (_, before), (name, after) in zip(marks, marks[1:]):
        print(f"{name:45s} {after - before:7.2f} s")
    print(f"{'in all':45s} {marks[-1][1] - marks[0][1]:7.2f} s\n")
    pstats.Stats(profile, stream=sys.stdout).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
