"""What the inference log costs a request: the time of `InferenceLog.record(...)` per call, while its writer thread
writes files in the background, for a local directory and (with --s3) a real S3 server (SeaweedFS on 127.0.0.1).

    python tests/bench/inference_log_bench.py --json                 # local directory, JSON Lines and Parquet
    python tests/bench/inference_log_bench.py --json --s3            # also an s3:// prefix (needs `weed`)

Each call records one request of --texts review texts (real Amazon review sentences, ~75 characters); --calls calls
per configuration, from --threads threads at once. Prints one line per configuration: p50/p99/max of a call in
microseconds, records per second accepted, records per second written (until the last file was written), records
dropped (more than REVIEWFLOW_INFERENCE_LOG_MAX_PENDING, 100,000, waiting) and whether every record was written.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from steps.serving.inference_log import InferenceLog  # noqa: E402
from tests.bench.clients import run_at_once  # noqa: E402


def texts(n: int) -> list[str]:
    import pandas as pd

    shared = ROOT.parent / "shared" / "data" / "amazon_review_snippets.csv"
    if shared.exists():
        return pd.read_csv(shared)["reviewText"].astype(str).head(n).tolist()
    return [f"the battery lasts all day and the screen is great, review {i}" for i in range(n)]


def run(location: str, fmt: str, calls: int, per_call: int, threads: int) -> dict:
    sample = texts(per_call)
    labels, probs = [1] * per_call, [0.9] * per_call
    log = InferenceLog(location, fmt=fmt, flush_seconds=0.2, batch_records=1000)
    timings: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        mine = []
        for _ in range(calls // threads):
            start = time.perf_counter()
            log.record(sample, labels, probs, "review-classifier", "1")
            mine.append(time.perf_counter() - start)
        with lock:
            timings.extend(mine)

    started = time.perf_counter()
    elapsed = run_at_once(client, threads)
    flushed = log.flush(timeout=120)
    drained = time.perf_counter() - started
    stats = log.close()
    timings.sort()
    return {"location": "s3" if location.startswith("s3://") else "local", "format": fmt, "threads": threads,
            "texts_per_call": per_call, "calls": len(timings),
            "p50_us": round(statistics.median(timings) * 1e6, 1),
            "p99_us": round(timings[int(0.99 * (len(timings) - 1))] * 1e6, 1),
            "max_us": round(timings[-1] * 1e6, 1),
            "records_per_s_accepted": round(len(timings) * per_call / elapsed),
            "written_records_per_s": round(stats["records_written"] / drained),
            "files": stats["batches_written"], "failed_writes": stats["failed_writes"],
            "records_dropped": stats["records_dropped"],
            "nothing_lost": flushed and stats["records_written"] == stats["records_logged"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--texts", type=int, default=8, help="texts per request")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--s3", action="store_true", help="also measure an s3:// prefix on a local SeaweedFS")
    parser.add_argument("--json", action="store_true", help="one JSON line per configuration")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("jsonl", "parquet"):
            results.append(run(str(Path(tmp) / fmt), fmt, args.calls, args.texts, args.threads))
        if args.s3:
            import os

            from infra.local import services

            server = services.start_s3(Path(tmp) / "seaweedfs")
            try:
                os.environ.update(server.env())
                for fmt in ("jsonl", "parquet"):
                    results.append(run(f"s3://{server.bucket}/bench-{fmt}", fmt, args.calls, args.texts,
                                       args.threads))
            finally:
                services.stop_pid(server.pid)
    for result in results:
        print(json.dumps(result) if args.json else
              "  ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
