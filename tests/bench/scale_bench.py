"""Benchmark: PredictFlow at scale, on this machine; one JSON line per measured run on stdout.

    python tests/bench/scale_bench.py baseline --rows 10000000 --files 50 --shards 2
    python tests/bench/scale_bench.py shards --model-uri models:/review-classifier.user.me/1 --rows 200000
    python tests/bench/scale_bench.py review --rows 1000000 --max-steps 200

`baseline`: a run's TF-IDF baseline (trained here on ../shared/data's Amazon sentences, or on synthetic reviews
without them, and logged as an MLflow pyfunc, as the evaluate step logs it) scores `--rows` synthetic reviews,
written as `--files` Parquet files (a directory: the shards take whole files), into a directory of parts.
Targets (issue 22): 10,000,000 rows in <= 10 min, peak RSS <= 3 GB per process.
`shards`: the same `--rows` scored by `--model-uri` (e.g. the default run's champion: its served backend) with
`--shards 1`, then with `--shards 2`, one file each (a single file: the shards take every other chunk). Target:
`--shards 2` at >= 0.9x the texts/s of `--shards 1`.
`review`: `python flows/review_flow.py run --data <rows as one Parquet file> --max-steps N` (the default model and
recipe otherwise). Reported besides the step seconds: each step process's peak RSS (VmHWM, read from /proc every
second for every process of the run), the datastore bytes of the run (the artifact blobs its tasks point at, as
stored, with the trained classifier kept beside them, and the whole datastore folder) against the input's Parquet
bytes, and the test metrics. Targets (issue 22): 1,000,000 rows with --max-steps 200 in <= 20 min, <= 4 GB
per step, datastore <= 3x the input.

The texts: sentences of ../shared/data (all three files; REVIEWFLOW_SHARED_DATA names another folder) joined in
seeded random pairs, so the vocabulary and the lengths are real; where that folder is missing, the synthetic
reviews of tests/fixtures.py (short, with obvious sentiment words: the figures then say "data": "synthetic").
Each flow runs as `python flows/<flow>.py run ...` in a fresh folder with its own Metaflow datastore and SQLite
MLflow store.
Reported: wall_s of the command, each step's seconds (task created_at -> finished_at; the slowest shard for
predict), texts_per_s (PredictFlow's own: scored rows over the window in which any shard read, scored or wrote),
peak RSS per step process (the shards report theirs; the others are read from their `ru_maxrss` the same way),
input and output bytes, and the CPU (lscpu model name).
"""
from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("REVIEWFLOW_SHARED_DATA", ROOT.parent / "shared" / "data"))
runpy.run_path(str(ROOT / "flows" / "flowkit" / "__init__.py"))  # the library on sys.path, as for the flows
sys.path.insert(0, str(ROOT))
from tests.bench.pipeline_bench import cpu_model  # noqa: E402


def bench_env(workdir: Path, tracking_uri: str = "") -> dict:
    """A flow run isolated in `workdir`: its own local datastore and (unless `tracking_uri`) SQLite MLflow store."""
    tracking_uri = tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}"
    return {**os.environ, "USERNAME": os.environ.get("USERNAME", "bench"), "MLFLOW_DISABLE_TELEMETRY": "true",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(workdir), "REVIEWFLOW_PROGRESS": "lines",
            "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}


def client_json(code: str, workdir: Path, env: dict):
    """The JSON that `code` (run in a child with the Metaflow client, in the run's folder) prints last."""
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])




def base_texts():
    """(texts, labels) to build reviews from: the real sentences when ../shared/data is there."""
    import pandas as pd

    files = sorted(SHARED.glob("*.csv")) if SHARED.is_dir() else []
    if files:
        frame = pd.concat([pd.read_csv(f, usecols=["reviewText", "isPositive"]) for f in files], ignore_index=True)
        frame = frame.dropna()
        return frame["reviewText"].astype(str).to_numpy(), frame["isPositive"].astype(int).to_numpy()
    from tests.fixtures import review_frame

    frame = review_frame(5000, seed=0)
    return frame["reviewText"].to_numpy(), frame["isPositive"].to_numpy()


def write_inputs(folder: Path, rows: int, files: int, seed: int = 0, fmt: str = "parquet") -> int:
    """`rows` reviews in `files` files; returns their bytes. Each text joins two seeded random base sentences;
    one row in a thousand has no text (PredictFlow reports those instead of scoring them)."""
    import numpy as np
    import pandas as pd

    texts, labels = base_texts()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    for k in range(files):
        n = min(per_file, rows - k * per_file)
        if n <= 0:
            break
        first, second = rng.integers(0, len(texts), n), rng.integers(0, len(texts), n)
        body = pd.Series(texts[first]).str.cat(pd.Series(texts[second]), sep=" ")
        body[rng.random(n) < 0.001] = None
        frame = pd.DataFrame({"reviewText": body, "isPositive": labels[first]})
        if fmt == "parquet":
            frame.to_parquet(folder / f"reviews-{k:03d}.parquet", index=False)
        else:
            frame.to_csv(folder / f"reviews-{k:03d}.csv", index=False)
    return sum(f.stat().st_size for f in folder.iterdir())


def log_baseline(workdir: Path) -> str:
    """Train the TF-IDF baseline on the base sentences and log it to workdir's MLflow store; its runs:/ URI."""
    import mlflow
    import pandas as pd

    from steps.evaluation.baseline import log_baseline_model, train_baseline

    texts, labels = base_texts()
    train = pd.DataFrame({"reviewText": texts, "isPositive": labels, "reviewId": range(len(texts))})
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    mlflow.set_experiment("scale-bench")
    with mlflow.start_run() as run:
        log_baseline_model(train_baseline(train))
    return f"runs:/{run.info.run_id}/baseline"


def run_predict(workdir: Path, data: Path, output: str, model_uri: str, shards: int, extra: list[str],
                tracking_uri: str = "") -> dict:
    env = bench_env(workdir, tracking_uri)
    command = [sys.executable, str(ROOT / "flows" / "predict_flow.py"), "run", "--data", str(data), "--output",
               output, "--model-uri", model_uri, "--shards", str(shards), *extra]
    started = time.perf_counter()
    with open(workdir / f"predict-{shards}.log", "w") as log:
        proc = subprocess.run(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"PredictFlow failed (exit {proc.returncode}); see {workdir / f'predict-{shards}.log'}")
    figures = read_run(workdir, env)
    figures.update(wall_s=round(wall, 1), shards=shards, command=" ".join(command[1:]))
    return figures


def read_run(workdir: Path, env: dict) -> dict:
    """Step seconds and the run's summary, read with the Metaflow client in a child (its own datastore)."""
    code = """
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("PredictFlow").latest_run
steps = {}
for step in run:
    seconds = [(t.finished_at - t.created_at).total_seconds() for t in step]
    steps[step.id] = round(max(seconds), 1)
end = run["end"].task.data
shards = [t.data.result for t in run["predict"]]
print(json.dumps({"run": run.pathspec, "steps": steps, "summary": end.summary,
                  "shard_rss_mb": sorted(r["peak_rss_mb"] for r in shards),
                  "write_rss_mb": run["write"].task.data.write_rss_mb,
                  "parts": len(end.manifest.get("parts", [])), "output": end.manifest["output"]}))
"""
    return client_json(code, workdir, env)


def watch_steps(proc, peaks: dict, every: float = 1.0, keep: Path | None = None) -> None:
    """Until `proc` ends: the peak RSS (MB) per Metaflow step name of every process below it, also written to
    `keep` as they grow (a run stopped before its end keeps them)."""
    def children(pid: int) -> list[int]:
        try:
            found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        return [int(c) for c in found] + [g for c in found for g in children(int(c))]

    while proc.poll() is None:
        for pid in children(proc.pid):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv]
            step = args[args.index("step") + 1] if "step" in args[:-1] else "runtime"
            hwm = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            peaks[step] = round(max(peaks.get(step, 0.0), hwm), 1)
        if keep is not None:
            keep.write_text(json.dumps(peaks))
        time.sleep(every)


def datastore_bytes(workdir: Path, env: dict, flow: str = "ReviewFlow") -> dict:
    """Bytes the run keeps in the datastore: its artifact blobs as stored (distinct ones, whatever step points at
    them) plus the trained classifier kept beside them (reviewflow-models/<flow>/<run id>: a file, not an
    artifact), the largest of them, and the whole local datastore folder."""
    code = f"""
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("{flow}").latest_run
blobs = {{}}
for step in run:
    for task in step:
        for artifact in task.artifacts:
            blobs.setdefault(artifact.sha, artifact.id)
print(json.dumps({{"run": run.id, "blobs": blobs}}))
"""
    found = client_json(code, workdir, env)
    blobs, root = found["blobs"], workdir / ".metaflow" / flow / "data"
    sizes = {sha: (root / sha[:2] / sha).stat().st_size for sha in blobs if (root / sha[:2] / sha).exists()}
    named = [(size, blobs[sha]) for sha, size in sizes.items()]
    models = workdir / ".metaflow" / "reviewflow-models" / flow / str(found["run"])
    named += [(f.stat().st_size, f"{f.relative_to(models)} (kept model)") for f in models.rglob("*") if f.is_file()]
    largest = sorted(named, reverse=True)[:6]
    folder = sum(f.stat().st_size for f in (workdir / ".metaflow").rglob("*") if f.is_file())
    return {"artifact_bytes": sum(size for size, _ in named), "largest": [[name, size] for size, name in largest],
            "folder_bytes": folder}


def run_review(workdir: Path, data: Path, args) -> dict:
    import threading

    env = bench_env(workdir)
    command = [sys.executable, str(ROOT / "flows" / "review_flow.py"), "run", "--data", str(data), "--max-steps",
               str(args.max_steps), *args.flow_args]
    peaks: dict = {}
    started = time.perf_counter()
    with open(workdir / "review.log", "w") as log:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=watch_steps, args=(proc, peaks, 1.0, workdir / "peak_rss_mb.json"),
                                   daemon=True)
        watcher.start()
        proc.wait()
        watcher.join(timeout=5)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"ReviewFlow failed (exit {proc.returncode}); see {workdir / 'review.log'}")
    code = """
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("ReviewFlow").latest_run
steps = {s.id: round(max((t.finished_at - t.created_at).total_seconds() for t in s), 1) for s in run}
data = run["end"].task.data
print(json.dumps({"run": run.pathspec, "steps": steps, "split": data.split_sizes,
                  "test_metrics": {k: data.test_metrics[k] for k in ("accuracy", "f1", "roc_auc", "rows")},
                  "train": {k: data.train_summary.get(k) for k in ("steps", "train_seconds",
                                                                    "samples_per_s", "budget_reached")},
                  "serving": data.served_model["backend"]}, default=str))
"""
    figures = client_json(code, workdir, env)
    figures.update(wall_s=round(wall, 1), peak_rss_mb=peaks, datastore=datastore_bytes(workdir, env),
                   command=" ".join(command[1:]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["baseline", "shards", "review"])
    parser.add_argument("--rows", type=int, default=0, help="default: 10,000,000 (baseline), 200,000 (shards)")
    parser.add_argument("--files", type=int, default=50, help="input Parquet files (baseline)")
    parser.add_argument("--shards", type=int, default=2, help="shards (baseline)")
    parser.add_argument("--model-uri", default="", help="the model (shards): e.g. the champion's models:/ URI")
    parser.add_argument("--tracking-uri", default="", help="(shards) the store the model is in, e.g. "
                                                            "sqlite:////path/mlflow.db")
    parser.add_argument("--max-steps", type=int, default=200, help="(review) ReviewFlow's --max-steps")
    parser.add_argument("--keep", action="store_true", help="keep the folder (its path goes to stderr)")
    parser.add_argument("flow_args", nargs="*", help="(review) more ReviewFlow options, after --")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="reviewflow-scale-"))
    print(f"working in {workdir}", file=sys.stderr)
    base = {"cpu": cpu_model(), "cpus": os.cpu_count(), "mode": args.mode,
            "data": str(SHARED) if SHARED.is_dir() else "synthetic"}
    if args.mode == "review":
        rows = args.rows or 1_000_000
        input_bytes = write_inputs(workdir / "input", rows, 1)
        figures = run_review(workdir, workdir / "input" / "reviews-000.parquet", args)
        worst = max(figures["peak_rss_mb"].values())
        figures.update(base, rows=rows, input_parquet_bytes=input_bytes,
                       datastore_over_input=round(figures["datastore"]["artifact_bytes"] / input_bytes, 2),
                       targets={"wall_s<=1200": figures["wall_s"] <= 1200, "rss_mb<=4096": worst <= 4096,
                                "datastore<=3x": figures["datastore"]["artifact_bytes"] <= 3 * input_bytes})
        print(json.dumps(figures))
    elif args.mode == "baseline":
        rows = args.rows or 10_000_000
        started = time.perf_counter()
        input_bytes = write_inputs(workdir / "input", rows, args.files)
        print(f"wrote {rows:,} rows in {args.files} files ({input_bytes / 1e6:.0f} MB) in "
              f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
        uri = log_baseline(workdir)
        figures = run_predict(workdir, workdir / "input", "predictions/", uri, args.shards, [])
        output_bytes = sum(f.stat().st_size for f in (workdir / "predictions").iterdir())
        figures.update(base, rows=rows, files=args.files, input_bytes=input_bytes, output_bytes=output_bytes,
                       targets={"wall_s<=600": figures["wall_s"] <= 600,
                                "rss_mb<=3072": max(figures["shard_rss_mb"] + [figures["write_rss_mb"]]) <= 3072})
        print(json.dumps(figures))
    else:
        if not args.model_uri:
            parser.error("shards needs --model-uri (and --tracking-uri where the model is registered)")
        rows = args.rows or 200_000
        write_inputs(workdir / "input", rows, 1)
        results = []
        for shards in (1, 2):
            figures = run_predict(workdir, workdir / "input", f"predictions-{shards}.parquet", args.model_uri,
                                  shards, [], args.tracking_uri)
            figures.update(base, rows=rows)
            results.append(figures)
            print(json.dumps(figures), flush=True)
        ratio = results[1]["summary"]["texts_per_s"] / results[0]["summary"]["texts_per_s"]
        print(json.dumps({**base, "rows": rows, "shards2_over_shards1": round(ratio, 3), "target>=0.9": ratio >= 0.9}))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
