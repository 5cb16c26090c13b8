"""Benchmark: the data steps (ingest, validate, split, tokenize) on synthetic review rows (default 1,000,000);
seconds and peak memory.

    python tests/bench/ingest_bench.py                       # 1,000,000 rows, CSV
    python tests/bench/ingest_bench.py --rows 200000 --format parquet --drift

The data file is written first (by this process); the measurement runs in a fresh child process, so its
peak RSS (VmHWM from /proc/self/status) is what the steps needed, imports included. About 0.5% of the rows
are bad on purpose (blank text, missing label, conflicting duplicates) so the quarantine path runs. The clean
rows are split (steps/data/split.py, seed 42 as in the default run) and tokenized with the packaged MiniLM
tokenizer at max_length 128 (steps/training/tokenize.py), as the flow's split and tokenize steps do.
`total_s` = ingest + validate + split + tokenize; `cpu_s` the process CPU time of the same four (on a
shared machine wall time also counts other jobs; `load_average` says how busy it was).
Targets: ingest + validate <= 60 s (issue #3); total <= 45 s and <= 3 GB (issue #16), for 1,000,000 rows.
Not part of the test suite.
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
runpy.run_path(str(ROOT / "flows" / "flowkit" / "__init__.py"))  # puts the library on sys.path, as for the flows

WORDS = ["the", "this", "player", "phone", "camera", "battery", "screen", "it", "is", "was", "and", "a", "very",
         "after", "week", "my", "with", "product", "sound", "quality", "great", "excellent", "love", "perfect",
         "amazing", "happy", "works", "recommend", "best", "solid", "terrible", "broken", "awful", "hate", "refund",
         "worst", "useless", "poor", "returned", "junk", "charger", "cable", "light", "fast", "slow", "price",
         "value", "box"]


def write_data(path: Path, rows: int, fmt: str, seed: int = 0) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    lengths = rng.integers(4, 60, rows)
    flat = words[rng.integers(0, len(words), int(lengths.sum()))]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    texts = [" ".join(flat[bounds[i]:bounds[i + 1]]) for i in range(rows)]
    labels = rng.integers(0, 2, rows).astype(object)
    chosen = rng.choice(rows, size=rows // 100, replace=False)  # 0.5% bad rows: three kinds
    bad, sources = chosen[: rows // 200], chosen[rows // 200:]
    for k, i in enumerate(bad):
        if k % 3 == 0:
            texts[i] = "   "
        elif k % 3 == 1:
            labels[i] = ""
        else:  # an exact duplicate of a good row with the other label: both rows are quarantined
            texts[i], labels[i] = texts[sources[k]], 1 - labels[sources[k]]
    frame = pd.DataFrame({
        "reviewId": [f"r{i // 3}" for i in range(rows)],
        "summary": [t[:30] for t in texts],
        "reviewText": texts,
        "verified": rng.integers(0, 2, rows).astype(bool),
        "time": rng.integers(1_300_000_000, 1_700_000_000, rows),
        "log_votes": rng.random(rows).round(3),
        "isPositive": labels,
    })
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame["isPositive"] = pd.to_numeric(frame["isPositive"].replace("", None)).astype("Int64")
        frame.to_parquet(path, index=False)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: str, with_drift: bool) -> dict:
    figures = {}
    start = time.perf_counter()
    import great_expectations  # noqa: F401  (import cost counted apart from the work)

    from steps.data.ingest import load_reviews
    from steps.data.split import split_reviews
    from steps.data.validate import validate_reviews
    from steps.training.models import DEFAULT_MODEL, load_tokenizer
    from steps.training.tokenize import tokenize_split

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    figures["imports_s"] = round(time.perf_counter() - start, 1)
    figures["rss_after_imports_mb"] = round(peak_rss_mb())
    cpu_start = time.process_time()
    start = time.perf_counter()
    result = load_reviews(path)
    figures["ingest_s"] = round(time.perf_counter() - start, 1)
    figures["rss_after_ingest_mb"] = round(peak_rss_mb())
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as docs:
        report = validate_reviews(result.frame, 0.05, result.origin, result.rejected, docs_dir=docs)
    figures["validate_s"] = round(time.perf_counter() - start, 1)
    figures.update(rows=len(result.frame), clean=len(report.clean), quarantined=report.quarantined,
                   passed=report.success, reasons={k: v for k, v in report.reason_counts().items() if v})
    figures["rss_after_validate_mb"] = round(peak_rss_mb())
    start = time.perf_counter()
    parts = split_reviews(report.clean, seed=42)
    figures["split_s"] = round(time.perf_counter() - start, 1)
    figures["split_sizes"] = parts.sizes()
    figures["rss_after_split_mb"] = round(peak_rss_mb())
    start = time.perf_counter()
    tokens = tokenize_split(parts.frames(), tokenizer, 128, progress_mode="quiet")
    figures["tokenize_s"] = round(time.perf_counter() - start, 1)
    figures["tokens"] = int(sum(int(t.lengths.sum()) for t in tokens.values()))
    figures["cpu_s"] = round(time.process_time() - cpu_start, 1)
    figures["load_average"] = round(os.getloadavg()[0], 2)
    if with_drift:
        from steps.data.drift import compare_to_profile, training_profile
        from steps.training.tokenize import encode

        reference = report.clean.sample(n=min(50_000, len(report.clean)), random_state=1)
        half = len(reference) // 2
        train, held_out = reference.iloc[:half], reference.iloc[half:]
        tokens = [encode(f["reviewText"].tolist(), f["isPositive"].to_numpy(), tokenizer, 128)
                  for f in (train, held_out)]
        profile = training_profile(train, tokens[0], tokens[1], tokenizer, DEFAULT_MODEL, 128)
        start = time.perf_counter()
        drift = compare_to_profile(profile, report.clean, tokenizer, champion_version=1)
        figures["drift_s"] = round(time.perf_counter() - start, 1)
        figures["drift_status"] = drift.status
        figures["profile_bytes"] = len(json.dumps(profile))
    figures["ingest_plus_validate_s"] = round(figures["ingest_s"] + figures["validate_s"], 1)
    figures["total_s"] = round(figures["ingest_plus_validate_s"] + figures["split_s"] + figures["tokenize_s"], 1)
    figures["peak_rss_mb"] = round(peak_rss_mb())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--data", help="use this file instead of writing one")
    parser.add_argument("--drift", action="store_true", help="also time the drift comparison (packaged MiniLM)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.drift)))
        return
    with tempfile.TemporaryDirectory(prefix="reviewflow-bench-") as tmp:
        path = Path(args.data) if args.data else Path(tmp) / f"reviews.{args.format}"
        if not args.data:
            start = time.perf_counter()
            write_data(path, args.rows, args.format)
            print(f"wrote {args.rows:,} rows to {path} ({path.stat().st_size / 1e6:.0f} MB) "
                  f"in {time.perf_counter() - start:.0f} s", flush=True)
        command = [sys.executable, __file__, "--measure", str(path)] + (["--drift"] if args.drift else [])
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
               "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        child = subprocess.run(command, capture_output=True, text=True, env=env)
        if child.returncode != 0:
            sys.exit(child.stderr)
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        figures["file_mb"] = round(path.stat().st_size / 1e6)
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
