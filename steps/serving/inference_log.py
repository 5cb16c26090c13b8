"""The inference log: what a served model was asked and what it answered, written in batches off the request path.

Opt-in: set REVIEWFLOW_INFERENCE_LOG to a local directory or an s3:// prefix where the model is served (or where
PredictFlow runs). Then

    log = InferenceLog.from_env()          # None when the variable is not set
    if log is not None:
        log.record(texts, labels, probabilities, model_name="review-classifier", model_version="3")

`record` only appends to an in-memory buffer (a lock held for a list append); a background thread writes the
buffer as one NEW file per flush, so a request never waits on storage and nothing is appended in place (an S3
object cannot be). A flush happens every REVIEWFLOW_INFERENCE_LOG_FLUSH_SECONDS (default 10), when
REVIEWFLOW_INFERENCE_LOG_BATCH records (default 1000) are waiting, on `flush()`, and at exit (`close()`, registered
with atexit). A failed write is counted (`stats()["failed_writes"]`), reported through the `logging` module on
the first failure and then once per REPORT_EVERY failures, and retried with the same records: nothing is lost
while the writer recovers. While storage keeps failing the writer backs off (the flush interval, doubled after each
failure in a row, at most MAX_RETRY_SECONDS or the flush interval if that is longer) and full buffers do not wake
it, so a failing store is not hammered at request rate; each `flush()` and `close()` call gets one attempt at
once. Only when more than REVIEWFLOW_INFERENCE_LOG_MAX_PENDING records (default 100,000) are waiting do the
oldest get dropped, and they are counted (`records_dropped`).

One row per scored text: time (UTC, ISO 8601, when `record` was called), request_id (rows of one call share it),
text, label (1 = positive), probability_positive, model_name, model_version. Files are JSON Lines (default) or
Parquet (REVIEWFLOW_INFERENCE_LOG_FORMAT=parquet), named so that their names sort by time:

    <location>/2026-11-22/20261122T181347.274123Z_<host>_<pid>_000042.jsonl

A local file is written under a hidden temporary name and renamed, so a reader never sees half a file.

This module is shipped inside the logged MLflow model: it imports only the standard library and, when needed,
pyarrow (Parquet) and boto3 (S3). S3 is reached through the endpoint the rest of reviewflow uses: the first of
AWS_ENDPOINT_URL_S3, METAFLOW_S3_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL, AWS_ENDPOINT_URL that is set (none = AWS).
"""
from __future__ import annotations

import atexit
import datetime as dt
import io
import json
import logging
import os
import re
import socket
import threading
import time
import uuid

ENV_LOCATION = "REVIEWFLOW_INFERENCE_LOG"
ENV_FORMAT = "REVIEWFLOW_INFERENCE_LOG_FORMAT"
ENV_FLUSH_SECONDS = "REVIEWFLOW_INFERENCE_LOG_FLUSH_SECONDS"
ENV_BATCH = "REVIEWFLOW_INFERENCE_LOG_BATCH"
ENV_MAX_PENDING = "REVIEWFLOW_INFERENCE_LOG_MAX_PENDING"
ENDPOINT_SETTINGS = ("AWS_ENDPOINT_URL_S3", "METAFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")

FIELDS = ("time", "request_id", "text", "label", "probability_positive", "model_name", "model_version")
FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet"}
SUFFIXES = tuple(FORMATS.values())
DEFAULT_FLUSH_SECONDS = 10.0
DEFAULT_BATCH = 1000
DEFAULT_MAX_PENDING = 100_000
MAX_FILE_RECORDS = 50_000  # a flush with more waiting writes several files
REPORT_EVERY = 20  # failed writes: the first is reported, then every REPORT_EVERY-th
MAX_RETRY_SECONDS = 60.0  # the longest wait between two attempts while storage keeps failing
CLOSE_TIMEOUT = 10.0  # seconds close() (also at exit) waits for the last writes
FILE_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{6})Z_")

logger = logging.getLogger("reviewflow.inference_log")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso_time(moment: dt.datetime) -> str:
    """2026-11-22T18:13:47.274Z: UTC, milliseconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def file_time(name: str) -> dt.datetime | None:
    """When the file `name` (a log file's base name) was written, read from its name; None if not a log file."""
    match = FILE_NAME.match(name)
    if not match:
        return None
    return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%f").replace(tzinfo=dt.UTC)


def s3_endpoint() -> str | None:
    for name in ENDPOINT_SETTINGS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _number(environ, name: str, default: float, kind=float):
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r}: must be positive")
    return value


class InferenceLog:
    """Buffered, background writer of scored texts to a directory or an s3:// prefix (see the module docstring)."""

    def __init__(self, location: str, fmt: str = "jsonl", flush_seconds: float = DEFAULT_FLUSH_SECONDS,
                 batch_records: int = DEFAULT_BATCH, max_pending: int = DEFAULT_MAX_PENDING):
        location = str(location).strip()
        if not location:
            raise ValueError(f"{ENV_LOCATION}: empty location; give a directory or an s3://bucket/prefix")
        if fmt not in FORMATS:
            raise ValueError(f"{ENV_FORMAT}={fmt!r}: expected one of {', '.join(FORMATS)}")
        self.location = location.rstrip("/") if location.startswith("s3://") else os.path.abspath(
            os.path.expanduser(location))
        if self.location.startswith("s3://"):
            bucket, _, prefix = self.location[len("s3://"):].partition("/")
            if not bucket:
                raise ValueError(f"{ENV_LOCATION}={location!r}: no bucket name; expected s3://bucket/prefix")
            self._bucket, self._prefix = bucket, prefix
        self.format = fmt
        self.flush_seconds = float(flush_seconds)
        self.batch_records = int(batch_records)
        self.max_pending = int(max_pending)
        self._host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
        self._counts = {"records_logged": 0, "records_written": 0, "records_dropped": 0, "batches_written": 0,
                        "failed_writes": 0}
        self._last_error = ""
        self._start()
        atexit.register(self.close)

    @classmethod
    def from_env(cls, environ=None) -> InferenceLog | None:
        """The log configured by REVIEWFLOW_INFERENCE_LOG (and its _FORMAT, _FLUSH_SECONDS, _BATCH, _MAX_PENDING
        settings); None when it is not set. A malformed setting raises ValueError naming it."""
        environ = os.environ if environ is None else environ
        location = (environ.get(ENV_LOCATION) or "").strip()
        if not location:
            return None
        return cls(location, fmt=(environ.get(ENV_FORMAT) or "jsonl").strip().lower(),
                   flush_seconds=_number(environ, ENV_FLUSH_SECONDS, DEFAULT_FLUSH_SECONDS),
                   batch_records=_number(environ, ENV_BATCH, DEFAULT_BATCH, int),
                   max_pending=_number(environ, ENV_MAX_PENDING, DEFAULT_MAX_PENDING, int))

    # ------------------------------------------------------------------------------------------ request path

    def _start(self) -> None:
        """(Re)create the buffer and the writer thread; also in a forked child, whose parent's thread is gone."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a write attempt ends
        self._wake = threading.Event()
        self._pending: list[tuple] = []
        self._writing = 0  # records taken by the writer and not yet written or put back
        self._closing = False
        self._seq = 0
        self._failing = 0  # failed writes in a row (0 after a write that worked)
        self._attempt_now = False  # set by flush(): one attempt without waiting out the back-off
        self._s3 = None
        self._thread = threading.Thread(target=self._run, name="reviewflow-inference-log", daemon=True)
        self._thread.start()

    def record(self, texts, labels, probabilities, model_name: str, model_version) -> None:
        """Queue one request's rows (one per text); never waits on storage, never raises on a storage problem."""
        if os.getpid() != self._pid:  # forked (a server's worker process): a fresh buffer and writer here
            self._start()
        texts, labels, probabilities = list(texts), list(labels), list(probabilities)
        if not len(texts) == len(labels) == len(probabilities):
            raise ValueError(f"record: {len(texts)} texts, {len(labels)} labels and {len(probabilities)} "
                             "probabilities; expected one of each per text")
        moment = iso_time(_now())
        request = uuid.uuid4().hex[:16]
        name, version = str(model_name), str(model_version)
        rows = [(moment, request, "" if t is None else str(t), int(label), float(p), name, version)
                for t, label, p in zip(texts, labels, probabilities)]
        if not rows:
            return
        with self._lock:
            self._pending.extend(rows)
            self._counts["records_logged"] += len(rows)
            overflow = len(self._pending) - self.max_pending
            if overflow > 0:
                del self._pending[:overflow]
                self._counts["records_dropped"] += overflow
            full = len(self._pending) >= self.batch_records
        if overflow > 0:
            logger.warning("inference log %s: %d record(s) dropped: more than %d waiting (storage failing: %s)",
                           self.location, overflow, self.max_pending, self._last_error or "writes too slow")
        if full:
            self._wake.set()

    def stats(self) -> dict:
        """records_logged, records_written, records_dropped, batches_written (files), failed_writes, pending,
        last_error and location."""
        with self._lock:
            return {**self._counts, "pending": len(self._pending) + self._writing, "last_error": self._last_error,
                    "location": self.location, "format": self.format}

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Write everything recorded so far; True once it is written, False if `timeout` passed first (storage
        failing: the records stay queued and are retried)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._attempt_now = True  # one attempt now, even while backing off; later ones follow the back-off
            target = self._counts["records_written"] + len(self._pending) + self._writing
            failures = self._counts["failed_writes"]
            while self._counts["records_written"] + self._counts["records_dropped"] < target:
                if not self._thread.is_alive():
                    return False
                if self._counts["failed_writes"] > failures and deadline is None:
                    return False  # no deadline and storage failing: do not wait forever
                self._wake.set()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.5 if left is None else min(left, 0.5))
            return True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> dict:
        """Flush (waiting at most `timeout` seconds), stop the writer, return the final stats."""
        if os.getpid() == self._pid and self._thread.is_alive():
            self.flush(timeout)
            with self._lock:
                self._closing = True
            self._wake.set()
            self._thread.join(timeout=max(1.0, timeout))
        stats = self.stats()
        if stats["pending"]:
            logger.warning("inference log %s: closed with %d record(s) not written (%d failed writes; last error: "
                           "%s)", self.location, stats["pending"], stats["failed_writes"], stats["last_error"])
        return stats

    # ------------------------------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        failing = 0
        while True:
            if failing:
                self._back_off(failing)
            else:
                self._wake.wait(self.flush_seconds)
            self._wake.clear()
            with self._lock:
                self._attempt_now = False
            while self._write_some():
                pass
            with self._lock:
                if self._closing:
                    return
                failing = self._failing

    def retry_seconds(self, failing: int) -> float:
        """How long the writer waits after `failing` failed writes in a row: the flush interval, doubled each
        time, at most MAX_RETRY_SECONDS (or the flush interval, if that is longer)."""
        return min(self.flush_seconds * 2 ** min(failing - 1, 30), max(MAX_RETRY_SECONDS, self.flush_seconds))

    def _back_off(self, failing: int) -> None:
        """Sleep before the next attempt; a full buffer does not cut it short, a flush() or close() call does."""
        retry_at = time.monotonic() + self.retry_seconds(failing)
        while True:
            with self._lock:
                if self._closing or self._attempt_now:
                    return
            left = retry_at - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(left)
            self._wake.clear()

    def _write_some(self) -> bool:
        """Write one file of waiting records; True if there may be more to write now."""
        with self._lock:
            if not self._pending:
                return False
            batch = self._pending[:MAX_FILE_RECORDS]
            del self._pending[:len(batch)]
            self._writing = len(batch)
            self._seq += 1
            seq = self._seq
        try:
            self._write_file(batch, seq)
        except Exception as err:  # anything storage throws: counted, reported, retried; never raised
            self._s3 = None  # the next attempt resolves endpoint and credentials afresh (rotated keys, fixed settings)
            with self._lock:
                self._pending[:0] = batch
                self._writing = 0
                self._counts["failed_writes"] += 1
                self._failing += 1
                failures = self._counts["failed_writes"]
                self._last_error = f"{type(err).__name__}: {err}"[:500]
                self._idle.notify_all()
            if failures == 1 or failures % REPORT_EVERY == 0:
                logger.warning("inference log %s: write failed (%d failed so far; records kept and retried): %s",
                               self.location, failures, self._last_error)
            return False
        with self._lock:
            self._writing = 0
            self._failing = 0
            self._counts["records_written"] += len(batch)
            self._counts["batches_written"] += 1
            self._idle.notify_all()
            return bool(self._pending)

    def _file_name(self, seq: int) -> tuple[str, str]:
        moment = _now()
        return (moment.strftime("%Y-%m-%d"),
                f"{moment.strftime('%Y%m%dT%H%M%S.%f')}Z_{self._host}_{os.getpid()}_{seq:06d}{FORMATS[self.format]}")

    def _encode(self, batch: list[tuple]) -> bytes:
        if self.format == "jsonl":
            # "replace": a lone surrogate (possible in JSON input) must not make a batch unwritable forever
            return "".join(json.dumps(dict(zip(FIELDS, row)), ensure_ascii=False) + "\n"
                           for row in batch).encode("utf-8", "replace")
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(zip(*batch))
        text = FIELDS.index("text")
        columns[text] = [t.encode("utf-8", "replace").decode("utf-8") for t in columns[text]]
        table = pa.table({name: pa.array(values, type=pa.int64() if name == "label" else
                                         pa.float64() if name == "probability_positive" else pa.string())
                          for name, values in zip(FIELDS, columns)})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return buffer.getvalue()

    def _write_file(self, batch: list[tuple], seq: int) -> None:
        day, name = self._file_name(seq)  # named at each attempt: a retried batch sorts after what was written
        body = self._encode(batch)
        if self.location.startswith("s3://"):
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                self._s3 = boto3.session.Session().client(
                    "s3", endpoint_url=s3_endpoint(),
                    config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                                  read_timeout=30))
            key = "/".join(p for p in (self._prefix, day, name) if p)
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=body)
            return
        folder = os.path.join(self.location, day)
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".{name}.tmp")
        with open(temporary, "wb") as handle:
            handle.write(body)
        os.replace(temporary, os.path.join(folder, name))
