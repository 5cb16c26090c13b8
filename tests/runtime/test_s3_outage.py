"""Standard settings only (Metaflow's S3 variables + --datastore=s3, MLFLOW_TRACKING_URI = an mlflow server that
proxies artifacts to S3): the S3 server dies mid-run, the run fails clearly, and `resume` finishes once it is back."""
import os
import re
import subprocess
import sys
import time
import uuid

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from infra.local.mlflow_server import start_mlflow
from infra.local.processes import stop_pid
from infra.local.s3 import start_s3
from tests.fixtures import write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, FLOWS, TINY_TRAINING, cli_options, flow_env

pytestmark = pytest.mark.flow


# Metaflow retries S3 for many minutes by default (flaky storage); here it should give up at once.
FAIL_FAST = {"METAFLOW_S3_RETRY_COUNT": "0", "METAFLOW_S3_TRANSIENT_RETRY_COUNT": "0",
             "METAFLOW_S3_CLIENT_RETRY_CONFIG": '{"max_attempts": 2, "mode": "standard"}'}


def test_s3_outage_fails_clearly_and_resume_completes(tmp_path, tiny_model_dir, use_mlflow, monkeypatch):
    s3 = start_s3(tmp_path / "s3")
    mlflow_server = None
    try:
        mlflow_server = start_mlflow(tmp_path / "mlflow", f"s3://{s3.bucket}/mlartifacts", s3.env())
        env = {**os.environ, **flow_env(tmp_path), **s3.env(),
               "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{s3.bucket}/metaflow-{uuid.uuid4().hex[:6]}",
               "MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_REGISTRY_URI": mlflow_server.url,
               **FAIL_FAST, "PYTHONUNBUFFERED": "1"}
        data = write_reviews_csv(tmp_path / "reviews.csv", rows=400)
        params = {"data": data, "model": tiny_model_dir, "seed": 1, **TINY_TRAINING}
        flow = [sys.executable, str(FLOWS / "review_flow.py"), "--datastore=s3"]
        proc = subprocess.Popen(flow + ["run"] + cli_options(params), cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        deadline = time.monotonic() + 300
        for line in proc.stdout:  # stop S3 as soon as training starts
            lines.append(line)
            if "/train/" in line and "Task is starting" in line:
                stop_pid(s3.pid)
                break
            assert time.monotonic() < deadline, "".join(lines)
        lines.extend(proc.stdout)
        assert proc.wait(timeout=600) != 0, "".join(lines)
        output = "".join(lines)
        assert "S3 access failed" in output and "Could not connect to the endpoint URL" in output
        assert "Workflow failed." in output and s3.secret_key not in output

        s3 = start_s3(tmp_path / "s3", access_key=s3.access_key, secret_key=s3.secret_key, ports=s3.ports)
        resumed = subprocess.run(flow + ["resume"], cwd=tmp_path, env=env, text=True, capture_output=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        log = resumed.stdout + resumed.stderr
        for step in ("start", "ingest", "validate", "split", "tokenize"):  # finished steps are reused
            assert re.search(rf"Cloning previously run task \d+/{step}/\d+", log), step
        assert not re.search(r"Cloning previously run task \d+/train/", log)  # train runs again
        assert "/train/" in log and "Done!" in log

        use_mlflow(mlflow_server.url)
        client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
        versions = client.search_model_versions(f"name = '{BRANCH_MODEL}'")
        assert len(versions) == 1
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        model = mlflow.pyfunc.load_model(f"models:/{BRANCH_MODEL}@champion")
        assert model.predict(pd.DataFrame({"reviewText": ["great , love it"]})).tolist() == [1]
    finally:
        if mlflow_server:
            stop_pid(mlflow_server.pid)
        stop_pid(s3.pid)
