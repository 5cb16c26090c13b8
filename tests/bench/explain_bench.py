"""What explanations cost: seconds per explained review and the convergence delta, by number of integration steps.

    python tests/bench/explain_bench.py --model-uri models:/review-classifier@champion \
        --data ../shared/data/amazon_review_snippets.csv --reviews 16 --steps 16,32,64

Loads the registered model (its MLflow pyfunc, as PredictFlow does), explains the same seeded sample of reviews
with each step count (Layer Integrated Gradients, steps/evaluation/explain.py) and prints one JSON line per step
count: seconds per review, the largest and the median |delta|, and the median |f(x) - f(reference)| the deltas
are to be read against. Run it where the MLflow store is (MLFLOW_TRACKING_URI, default ./mlflow.db).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri", default="models:/review-classifier@champion")
    parser.add_argument("--data", default="../shared/data/amazon_review_snippets.csv")
    parser.add_argument("--reviews", type=int, default=16)
    parser.add_argument("--steps", default="16,32,64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    import pandas as pd
    import torch

    from steps.evaluation.explain import explainer_for
    from steps.runtime.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri())
    texts = pd.read_csv(args.data)["reviewText"].astype(str).sample(args.reviews, random_state=args.seed).tolist()
    explain = explainer_for(mlflow.pyfunc.load_model(args.model_uri))
    explain(texts[:2], 4)  # warm-up
    for steps in (int(s) for s in args.steps.split(",")):
        started = time.perf_counter()
        explained = explain(texts, steps)
        seconds = time.perf_counter() - started
        deltas = [abs(e["delta"]) for e in explained]
        changes = [abs(e["logit_difference"] - e["reference_logit_difference"]) for e in explained]
        print(json.dumps({"steps": steps, "reviews": len(texts), "threads": torch.get_num_threads(),
                          "seconds_per_review": round(seconds / len(texts), 3),
                          "max_abs_delta": round(max(deltas), 4),
                          "median_abs_delta": round(statistics.median(deltas), 4),
                          "median_abs_change": round(statistics.median(changes), 3),
                          "load_average": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
