"""The inference log (steps/serving/inference_log.py): concurrent requests lose nothing, locally and on a real S3
server; storage failures are counted, reported and retried, never raised into a request; a request never waits on
storage."""
import json
import logging
import math
import socket
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from steps.serving import inference_log
from steps.serving.inference_log import InferenceLog


def read_local(location) -> pd.DataFrame:
    files = sorted(p for p in Path(location).rglob("*") if p.is_file())
    assert all(not p.name.startswith(".") for p in files), "a temporary file was left behind"
    frames = [pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_json(p, lines=True, dtype=False)
              for p in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=inference_log.FIELDS)


def hammer(log: InferenceLog, threads: int = 8, requests: int = 150) -> set[str]:
    """Requests from several threads at once, 1 to 4 texts each; returns every text sent (all distinct)."""
    sent: list[set[str]] = [set() for _ in range(threads)]

    def client(n: int) -> None:
        for i in range(requests):
            texts = [f"thread {n} request {i} text {k} ünïcödé" for k in range(1 + i % 4)]
            log.record(texts, [k % 2 for k in range(len(texts))], [0.25 + 0.5 * (k % 2) for k in range(len(texts))],
                       "review-classifier", 3)
            sent[n].update(texts)

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return set().union(*sent)


def check_rows(rows: pd.DataFrame, sent: set[str]) -> None:
    assert len(rows) == len(sent) and set(rows["text"]) == sent  # nothing lost, nothing twice
    assert list(rows.columns) == list(inference_log.FIELDS)
    assert set(rows["model_name"]) == {"review-classifier"} and set(rows["model_version"]) == {"3"}
    assert ((rows["label"] == 1) == (rows["probability_positive"] > 0.5)).all()
    assert rows["time"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z").all()
    # the rows of one request share its id and time
    assert rows.groupby("request_id")["time"].nunique().max() == 1


def test_concurrent_requests_lose_nothing_and_files_sort_by_time(tmp_path):
    log = InferenceLog(tmp_path / "log", flush_seconds=0.05, batch_records=100)
    sent = hammer(log)
    assert log.flush(timeout=30)
    stats = log.close()
    files = sorted(p for p in (tmp_path / "log").rglob("*") if p.is_file())
    assert stats["records_logged"] == stats["records_written"] == len(sent) == 8 * sum(1 + i % 4 for i in range(150))
    assert stats["failed_writes"] == stats["records_dropped"] == stats["pending"] == 0
    assert stats["batches_written"] == len(files) > 1  # batched: several files, never appended in place
    check_rows(read_local(tmp_path / "log"), sent)
    times = [inference_log.file_time(p.name) for p in files]
    assert None not in times and times == sorted(times)
    assert [p.parent.name for p in files] == [t.strftime("%Y-%m-%d") for t in times]


def test_parquet_files_and_settings_from_the_environment(tmp_path):
    assert InferenceLog.from_env({}) is None
    assert InferenceLog.from_env({inference_log.ENV_LOCATION: "  "}) is None
    with pytest.raises(ValueError, match="REVIEWFLOW_INFERENCE_LOG_FORMAT='csv'"):
        InferenceLog.from_env({inference_log.ENV_LOCATION: str(tmp_path), inference_log.ENV_FORMAT: "csv"})
    with pytest.raises(ValueError, match="REVIEWFLOW_INFERENCE_LOG_BATCH='many'"):
        InferenceLog.from_env({inference_log.ENV_LOCATION: str(tmp_path), inference_log.ENV_BATCH: "many"})
    log = InferenceLog.from_env({inference_log.ENV_LOCATION: str(tmp_path / "pq"), inference_log.ENV_FORMAT: "parquet",
                                 inference_log.ENV_FLUSH_SECONDS: "0.05"})
    assert (log.format, log.flush_seconds, log.location) == ("parquet", 0.05, str(tmp_path / "pq"))
    log.record(["great", None, "lone \ud800 surrogate"], [1, 0, 0], [0.9, 0.2, 0.1], "m", "7")
    with pytest.raises(ValueError, match="3 texts, 2 labels"):
        log.record(["a", "b", "c"], [1, 0], [0.9, 0.2, 0.1], "m", "7")
    assert log.close()["records_written"] == 3
    [file] = [p for p in (tmp_path / "pq").rglob("*") if p.is_file()]
    rows = pd.read_parquet(file)
    assert file.suffix == ".parquet" and rows["text"].tolist() == ["great", "", "lone ? surrogate"]
    assert str(rows["label"].dtype) == "int64" and str(rows["probability_positive"].dtype) == "float64"


def test_failed_writes_are_counted_reported_once_per_n_and_retried_without_loss(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(inference_log, "REPORT_EVERY", 3)
    monkeypatch.setattr(inference_log, "MAX_RETRY_SECONDS", 0.05)  # no back-off growth: many failures in 1 s
    blocker = tmp_path / "log"
    blocker.write_text("a file where the log directory should be")
    log = InferenceLog(blocker, flush_seconds=0.05, batch_records=5)
    caplog.set_level(logging.WARNING, logger="reviewflow.inference_log")
    for i in range(4):
        log.record([f"text {i}", f"more {i}"], [1, 0], [0.8, 0.3], "m", "1")  # never raises
    assert not log.flush(timeout=1.0)  # storage failing: not written, still queued
    stats = log.stats()
    assert stats["failed_writes"] >= 1 and stats["pending"] == 8 and stats["records_written"] == 0
    assert "NotADirectoryError" in stats["last_error"] or "FileExistsError" in stats["last_error"]
    deadline = time.monotonic() + 30
    while log.stats()["failed_writes"] < 3 and time.monotonic() < deadline:  # a starved writer may need longer
        time.sleep(0.05)

    blocker.unlink()  # storage recovers: everything queued is written, once
    assert log.flush(timeout=10)
    stats = log.close()  # the writer has stopped: no failure can be counted after this
    assert (stats["records_written"], stats["pending"], stats["records_dropped"]) == (8, 0, 0)
    assert sorted(read_local(blocker)["text"]) == sorted([f"{w} {i}" for w in ("text", "more") for i in range(4)])
    warnings = [r.getMessage() for r in caplog.records if r.name == "reviewflow.inference_log"]
    assert len(warnings) == 1 + stats["failed_writes"] // 3  # the first failure, then one per REPORT_EVERY
    assert "write failed (1 failed so far; records kept and retried)" in warnings[0]
    assert "write failed (3 failed so far" in warnings[1]


def test_a_failing_store_is_retried_with_growing_pauses_not_in_a_loop(tmp_path):
    """Failing storage is not hammered: a full buffer and flush() do not cut the back-off short; close() makes
    one last attempt at once, which writes everything if storage has recovered."""
    blocker = tmp_path / "log"
    blocker.write_text("not a directory")
    log = InferenceLog(blocker, flush_seconds=0.05, batch_records=1)
    assert [log.retry_seconds(n) for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.2, 0.4]
    assert log.retry_seconds(40) == inference_log.MAX_RETRY_SECONDS
    started = time.monotonic()
    for _ in range(150):  # a request every 10 ms or more, each one filling the batch
        log.record(["again"], [1], [0.9], "m", "1")
        time.sleep(0.01)
    assert not log.flush(timeout=0.2)  # one attempt at once, then the back-off's
    failed, seconds = log.stats()["failed_writes"], time.monotonic() - started
    # attempts at 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2 ... s (back-off doubling from 0.05 s), plus flush()'s one
    assert 1 <= failed <= 2 + math.log2(seconds / 0.05 + 1), (failed, seconds)
    blocker.unlink()
    stats = log.close(timeout=5)
    assert stats["pending"] == 0 and stats["records_written"] == stats["records_logged"] == 150


def test_flush_and_close_do_not_wait_out_a_long_back_off(tmp_path):
    """After a failure the writer waits 20 s (the flush interval) before retrying on its own; flush() and
    close() each try at once, so a recovered store is written without that wait, at exit too."""
    def failed_once(name: str) -> tuple:
        blocker = tmp_path / name
        blocker.write_text("not a directory")
        log = InferenceLog(blocker, flush_seconds=20)
        log.record(["one", "two"], [1, 0], [0.9, 0.1], "m", "1")
        assert not log.flush(timeout=1.0) and log.stats()["failed_writes"] == 1
        blocker.unlink()  # storage recovers; the writer's own retry is 20 s away
        return log, time.monotonic()

    log, started = failed_once("flushed")
    assert log.flush(timeout=10) and time.monotonic() - started < 5
    assert log.close()["records_written"] == 2
    log, started = failed_once("closed")
    stats = log.close(timeout=10)
    assert time.monotonic() - started < 5 and stats["records_written"] == 2 and stats["pending"] == 0


def test_a_full_buffer_drops_the_oldest_records_and_counts_them(tmp_path):
    blocker = tmp_path / "log"
    blocker.write_text("not a directory")
    log = InferenceLog(blocker, flush_seconds=60, batch_records=1000, max_pending=5)
    log.record([f"t{i}" for i in range(8)], [1] * 8, [0.9] * 8, "m", "1")
    blocker.unlink()
    assert log.flush(timeout=10)
    stats = log.close()
    assert (stats["records_logged"], stats["records_dropped"], stats["records_written"]) == (8, 3, 5)
    assert sorted(read_local(blocker)["text"]) == ["t3", "t4", "t5", "t6", "t7"]  # the newest kept


def read_s3(location: str) -> pd.DataFrame:
    from steps.runtime import storage

    frames = []
    for uri in storage.list_objects(location + "/"):
        assert inference_log.file_time(uri.rsplit("/", 1)[-1]) is not None, uri
        with storage.S3Object(uri).open_binary() as handle:
            frames.append(pd.DataFrame([json.loads(line) for line in handle.read().decode().splitlines()]))
    return pd.concat(frames, ignore_index=True)


def test_concurrent_requests_to_an_s3_prefix_lose_nothing(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")  # the log resolves the endpoint like storage.py: the next setting
    location = f"s3://{s3_env.bucket}/inference/{uuid.uuid4().hex}"
    log = InferenceLog.from_env({inference_log.ENV_LOCATION: location + "/", inference_log.ENV_BATCH: "200",
                                 inference_log.ENV_FLUSH_SECONDS: "0.1"})
    assert log.location == location
    sent = hammer(log, threads=6, requests=60)
    assert log.flush(timeout=60)
    stats = log.close()
    assert stats["records_written"] == len(sent) and stats["failed_writes"] == 0 and stats["batches_written"] > 1
    check_rows(read_s3(location), sent)


def test_refused_s3_writes_are_counted_until_the_credentials_work(s3_env, monkeypatch):
    """Read-only credentials (the S3 server's `reader` identity): every write is refused and counted; with
    working credentials in the environment the next attempt (a fresh client) writes everything that waited."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "readonlykey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "readonly-secret-xyz")
    location = f"s3://{s3_env.bucket}/refused/{uuid.uuid4().hex}"
    log = InferenceLog(location, flush_seconds=0.05)
    log.record(["one", "two"], [1, 0], [0.7, 0.2], "m", "2")
    assert not log.flush(timeout=1.0)
    deadline = time.monotonic() + 30
    while log.stats()["failed_writes"] < 1 and time.monotonic() < deadline:  # a loaded S3 server answers late
        time.sleep(0.05)
    stats = log.stats()
    assert stats["failed_writes"] >= 1 and stats["pending"] == 2 and "AccessDenied" in stats["last_error"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    assert log.flush(timeout=30)
    assert log.close()["records_written"] == 2
    assert sorted(read_s3(location)["text"]) == ["one", "two"]


def test_a_request_never_waits_for_a_hanging_storage_server(tmp_path, monkeypatch):
    """The S3 endpoint accepts connections and never answers; while the writer hangs on it, requests still go
    through at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = threading.Event()
    connections = []

    def accept() -> None:
        try:
            connection, _ = server.accept()
        except OSError:
            return
        connections.append(connection)
        accepted.set()

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    log = InferenceLog("s3://bucket/log", flush_seconds=0.05)
    try:
        log.record(["first"], [1], [0.9], "m", "1")
        assert accepted.wait(30), "the writer never reached the storage server"
        requests = threading.Thread(target=lambda: [log.record([f"t{i}"], [0], [0.1], "m", "1") for i in range(500)])
        requests.start()
        requests.join(timeout=20)
        assert not requests.is_alive(), "record() waited on storage"
        stats = log.stats()
        assert stats["records_logged"] == 501 and stats["records_written"] == 0 and stats["pending"] == 501
        assert not log.flush(timeout=0.5)
    finally:
        log.close(timeout=0.1)
        server.close()
        for connection in connections:
            connection.close()
