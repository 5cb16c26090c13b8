"""What the benchmarks share: run one client function on several threads at once and time it."""
from __future__ import annotations

import threading
import time


def run_at_once(client, threads: int) -> float:
    """Start `threads` threads that each run `client()`, wait for all; the seconds from the first start to the
    last end."""
    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started
