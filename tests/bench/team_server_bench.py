"""What MLflow's basic auth costs the team server: requests per second with the login checked on every request
against the same server remembering a verified login (infra/local/mlflow_server.py, AUTH_CACHE_SECONDS).

    python tests/bench/team_server_bench.py --json

Starts PostgreSQL (the distribution's binaries, on 127.0.0.1) and, one after the other, `mlflow server` with the
basic-auth app on it, once with `auth_cache_ttl_seconds = 0` and once with the cache; each gets --requests
registry searches (the request the flows and the promotion lock make most) from --threads threads at once,
with the admin login. Prints one line per configuration: requests/s, p50 and p99 latency in ms, and the CPU
seconds the server's processes used.
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from infra.local import postgres  # noqa: E402
from infra.local.mlflow_server import start_mlflow  # noqa: E402
from infra.local.processes import local_urlopen, stop_pid  # noqa: E402
from tests.bench.clients import run_at_once  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its live descendants (the uvicorn worker), from /proc."""
    import os

    def tree(root: int) -> list[int]:
        pids = [root]
        for task in Path(f"/proc/{root}/task").iterdir():
            for child in (task / "children").read_text().split():
                pids += tree(int(child))
        return pids

    ticks = 0
    for member in tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def hammer(server, requests: int, threads: int, max_seconds: float) -> dict:
    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    url = f"{server.url}/api/2.0/mlflow/registered-models/search?max_results=10"
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    deadline = time.monotonic() + max_seconds

    def client() -> None:
        mine = []
        for _ in range(max(1, requests // threads)):
            if time.monotonic() > deadline:
                with lock:
                    failures.append(f"not sent: over --max-seconds {max_seconds:g}")
                continue
            request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
            start = time.perf_counter()
            try:
                with local_urlopen(request, timeout=60) as response:
                    response.read()
            except Exception as err:  # counted and reported, never silently dropped
                with lock:
                    failures.append(f"{type(err).__name__}: {err}")
                continue
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    cpu_before = cpu_seconds(server.pid)
    elapsed = run_at_once(client, threads)
    latencies.sort()
    return {"requests": len(latencies), "failed": len(failures), "first_failure": failures[0] if failures else "",
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
            "server_cpu_s": round(cpu_seconds(server.pid) - cpu_before, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="stop sending after this many seconds per configuration (the rest count as failed)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()
    postgres.binaries()  # a clear error naming the package when PostgreSQL is missing
    state = Path(tempfile.mkdtemp(prefix="reviewflow-team-bench-"))
    state.chmod(0o755)  # as root, PostgreSQL runs as the `postgres` user and must reach its folder
    results = []
    try:
        database = postgres.start_postgres(state / "postgres", ("mlflow", "auth_off", "auth_on"))
    except Exception:
        shutil.rmtree(state, ignore_errors=True)
        raise
    try:
        for cache_seconds in (0, 60):
            server = start_mlflow(state / f"mlflow-{cache_seconds}", str(state / "artifacts"), {},
                                  backend_store_uri=database.uri("mlflow"),
                                  auth_database_uri=database.uri("auth_on" if cache_seconds else "auth_off"),
                                  auth=True, auth_cache_seconds=cache_seconds)
            try:
                hammer(server, 2 * args.threads, args.threads, args.max_seconds)  # warm up: connections, first login
                results.append({"auth_cache_seconds": cache_seconds,
                                **hammer(server, args.requests, args.threads, args.max_seconds)})
            finally:
                stop_pid(server.pid)
    finally:
        postgres.stop_postgres(database.data_dir)
        shutil.rmtree(state, ignore_errors=True)  # the database, its password file and the auth config
    for result in results:
        print(json.dumps(result) if args.json else
              "  ".join(f"{key}={value}" for key, value in result.items() if key != "first_failure" or value))
    return 0 if all(r["failed"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
