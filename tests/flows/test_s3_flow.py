"""ReviewFlow with everything in a real S3 server (SeaweedFS on 127.0.0.1): Metaflow datastore + MLflow artifacts."""
import pickle
import uuid

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from infra.local.s3 import s3_client
from steps.runtime import storage
from tests.fixtures import write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, TINY_TRAINING, run_flow

pytestmark = pytest.mark.flow


def s3_flow_env(server, prefix: str) -> dict:
    return {
        **server.env(),
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{server.bucket}/{prefix}/metaflow",
        "MLFLOW_DEFAULT_ARTIFACT_ROOT": f"s3://{server.bucket}/{prefix}/mlflow",
        "METAFLOW_S3_RETRY_COUNT": "1",
    }


def keys_under(server, prefix: str) -> list[str]:
    client = storage.s3_client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


@pytest.fixture(scope="module")
def s3_run(s3_server, tmp_path_factory, tiny_model_dir):
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    workdir = tmp_path_factory.mktemp("s3-flow")
    local = write_reviews_csv(workdir / "reviews.csv", rows=400)
    client = s3_client(s3_server.endpoint, s3_server.access_key, s3_server.secret_key)
    client.upload_file(str(local), s3_server.bucket, f"{prefix}/input/reviews.csv")
    env = s3_flow_env(s3_server, prefix)
    run, executing = run_flow("review_flow.py", workdir, env=env, data=f"s3://{s3_server.bucket}/{prefix}/input/",
                              model=str(tiny_model_dir), seed=1, **TINY_TRAINING)
    assert executing.status == "successful", executing.stderr
    return run, executing, f"sqlite:///{workdir / 'mlflow.db'}", prefix, env


def test_metaflow_artifacts_and_mlflow_model_land_in_the_bucket(s3_run, s3_server, s3_env):
    run, executing, uri, prefix, env = s3_run
    assert run.data.ingest_summary["rows"] == 400  # read from s3://.../input/ through boto3
    checkpoints = f"s3://{s3_server.bucket}/{prefix}/metaflow/reviewflow-checkpoints/ReviewFlow/{run.id}/train"
    assert f"checkpoint of epoch 1 saved to {checkpoints}" in executing.stdout  # epoch checkpoints in S3 too
    # deleted by evaluate, once the trained model was kept and Metaflow had stored the artifact naming it
    assert not keys_under(s3_server, f"{prefix}/metaflow/reviewflow-checkpoints/ReviewFlow/{run.id}/train")
    train = run["train"].task
    model_key = f"{prefix}/metaflow/reviewflow-models/ReviewFlow/{run.id}/train/{train.id}/attempt-0/classifier.tar"
    assert keys_under(s3_server, f"{prefix}/metaflow/reviewflow-models/") == [model_key]  # kept beside, raw
    assert train.data.classifier["path"] == model_key.removeprefix(f"{prefix}/metaflow/").rsplit("/", 1)[0]
    metaflow_keys = keys_under(s3_server, f"{prefix}/metaflow/ReviewFlow/")
    assert any("/data/" in k for k in metaflow_keys)  # content-addressed artifacts
    mlflow_keys = keys_under(s3_server, f"{prefix}/mlflow/")
    assert any(k.endswith("MLmodel") for k in mlflow_keys)
    assert any(k.endswith("model.safetensors") for k in mlflow_keys)
    assert any(k.endswith("gx_result.json") for k in mlflow_keys)  # step artifacts too


def test_champion_loads_from_s3_and_predicts(s3_run, s3_env, use_mlflow, monkeypatch):
    run, executing, uri, prefix, env = s3_run
    use_mlflow(uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", env["MLFLOW_S3_ENDPOINT_URL"])
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        BRANCH_MODEL, "champion")
    assert version.source.startswith("models:/") or version.source.startswith("s3://")
    artifact_uri = mlflow.get_run(version.run_id).info.artifact_uri
    assert artifact_uri.startswith(f"s3://reviewflow/{prefix}/mlflow/")
    model = mlflow.pyfunc.load_model(f"models:/{BRANCH_MODEL}@champion")
    out = model.predict(pd.DataFrame({"reviewText": ["great phone , love it", "broken junk , terrible"]}))
    assert out.tolist() == [1, 0]


def test_credentials_never_appear_in_logs_runs_or_artifacts(s3_run, s3_server, s3_env, tmp_path, use_mlflow,
                                                            monkeypatch):
    run, executing, uri, prefix, env = s3_run
    secret = s3_server.secret_key
    assert secret not in executing.stdout and secret not in executing.stderr
    use_mlflow(uri)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", env["MLFLOW_S3_ENDPOINT_URL"])
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("reviewflow").experiment_id])
    assert len(runs) == 8
    for mlflow_run in runs:
        assert secret not in repr(mlflow_run.data.params) and secret not in repr(mlflow_run.data.tags)
        local = mlflow.artifacts.download_artifacts(run_id=mlflow_run.info.run_id,
                                                    dst_path=str(tmp_path / mlflow_run.info.run_id))
        from pathlib import Path

        for file in Path(local).rglob("*"):
            if file.is_file():
                assert secret.encode() not in file.read_bytes(), file
    for version in client.search_model_versions(f"name = '{BRANCH_MODEL}'"):
        assert secret not in repr(version.tags)
    for step in run:
        for task in step:
            for artifact in task:
                assert secret.encode() not in pickle.dumps(artifact.data), f"{step.id}.{artifact.id}"
