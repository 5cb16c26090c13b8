"""TuneFlow on the default data and encoder, then the best recipe against the default one over several seeds.

    python tests/bench/tune_bench.py                              # 24 trials, 2 workers, 45 min, seeds 42,1,2
    python tests/bench/tune_bench.py --trials 6 --seeds 42 --keep
    python tests/bench/tune_bench.py --compare-only <workdir>     # the seeds again for a finished TuneFlow run

1. `python flows/tune_flow.py run --trials N --workers K --timeout T` in a folder of its own (own datastore, own
   SQLite MLflow store and study database), timed end to end.
2. The best trial's recipe and ReviewFlow's default recipe, each trained once per seed with the engine on the default
   run's split (seed 42 whatever the training seed: the test rows stay the same, as tests/bench/epoch_sweep.py does)
   and scored on the test rows with PyTorch as the evaluate step's predict_proba does.

Prints one JSON object: the CPU, TuneFlow's wall seconds and trial counts, the best recipe, and per recipe the
per-seed and mean/std test accuracy and F1. Not part of the test suite (about 30-45 minutes on a 2-core CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench.epoch_sweep import default_split  # noqa: E402
from tests.bench.scale_bench import bench_env, client_json  # noqa: E402


def run_tune_flow(workdir: Path, args) -> dict:
    cmd = [sys.executable, str(ROOT / "flows" / "tune_flow.py"), "run", "--data", args.data, "--trials",
           str(args.trials), "--workers", str(args.workers), "--timeout", args.timeout]
    started = time.perf_counter()
    with open(workdir / "tune_flow.log", "w") as log:
        done = subprocess.run(cmd, cwd=workdir, env=bench_env(workdir), stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"TuneFlow failed (exit {done.returncode}); its log: {workdir / 'tune_flow.log'}")
    return {"wall_seconds": round(wall, 1), **finished_run(workdir)}


def finished_run(workdir: Path) -> dict:
    code = ("import json; from metaflow import Flow, namespace; namespace(None); r = Flow('TuneFlow').latest_run; "
            "d = r.data; rows = d.trial_rows; print(json.dumps({'run': r.pathspec, 'best': d.best, "
            "'test_metrics': {k: v for k, v in (d.test_metrics or {}).items() if k in ('accuracy', 'f1', 'rows')}, "
            "'trials': {s: sum(x['state'] == s for x in rows) for s in ('complete', 'pruned', 'fail')}, "
            "'trial_seconds': [x['seconds'] for x in rows], 'importances': d.importances}, default=str))")
    return client_json(code, workdir, bench_env(workdir))


def seeds_compared(data: str, best_values: dict, seeds: list[int]) -> dict:
    """{recipe: {per_seed, accuracy_mean, accuracy_std, f1_mean, f1_std}} for the default and the best recipe."""
    from schemas import LABEL_COLUMN
    from steps import settings
    from steps.evaluation.evaluate import predict_proba
    from steps.evaluation.metrics import classification_metrics
    from steps.training.auto_model import choose_model, recipe_values
    from steps.training.config import TrainConfig
    from steps.training.device import seed_everything
    from steps.training.loop import train_classifier
    from steps.training.models import load_classifier, load_tokenizer
    from steps.training.tokenize import tokenize_split

    model = choose_model("auto", None).model
    defaults = {s.name: s.default for s in settings.select("training", "max-length")}
    recipes = {"default": recipe_values(model, dict(defaults)),
               "best": recipe_values(model, {**defaults, **{k: v for k, v in best_values.items() if k in defaults}})}
    parts = default_split(data)  # the split both recipes are scored on
    labels = parts.test[LABEL_COLUMN].to_numpy().astype(int)
    out = {}
    for name, values in recipes.items():
        with contextlib.redirect_stdout(sys.stderr):  # stdout: only the JSON
            tokens = tokenize_split(parts.frames(), load_tokenizer(model), int(values["max-length"]), "quiet")
        per_seed = []
        for seed in seeds:
            config = TrainConfig.from_values({**values, "seed": seed})
            seed_everything(seed)
            classifier = load_classifier(model)
            started = time.perf_counter()
            train_classifier(classifier, tokens["train"], tokens["validation"], config, progress="quiet",
                             log=lambda line: None)
            figures = classification_metrics(labels, predict_proba(classifier, tokens["test"]))
            per_seed.append({"seed": seed, "accuracy": round(figures["accuracy"], 4), "f1": round(figures["f1"], 4),
                             "seconds": round(time.perf_counter() - started, 1)})
            print(json.dumps({"recipe": name, **per_seed[-1]}), file=sys.stderr, flush=True)
        out[name] = {"values": {k: values[k] for k in sorted(values)}, "per_seed": per_seed,
                     **{f"{m}_{stat}": round(fn([r[m] for r in per_seed]), 4) for m in ("accuracy", "f1")
                        for stat, fn in (("mean", statistics.mean),
                                         ("std", lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0))}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample:amazon")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", default="45m")
    parser.add_argument("--seeds", default="42,1,2")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (its path is in the JSON)")
    parser.add_argument("--compare-only", default="", help="a kept work folder: only the seed comparison")
    args = parser.parse_args(argv)
    from tests.bench.pipeline_bench import cpu_model

    workdir = Path(args.compare_only or tempfile.mkdtemp(prefix="reviewflow-tune-bench-"))
    tuned = finished_run(workdir) if args.compare_only else run_tune_flow(workdir, args)
    print(json.dumps({"tune": tuned}, default=str), file=sys.stderr, flush=True)
    compared = seeds_compared(args.data, tuned["best"]["values"], [int(s) for s in args.seeds.split(",")])
    gain = {m: round(compared["best"][f"{m}_mean"] - compared["default"][f"{m}_mean"], 4) for m in ("accuracy", "f1")}
    print(json.dumps({"cpu": cpu_model(), "workdir": str(workdir) if args.keep or args.compare_only else None,
                      "tune": tuned, "seeds": compared, "best_minus_default": gain}, indent=2, default=str))
    if not (args.keep or args.compare_only):
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
