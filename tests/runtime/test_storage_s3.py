"""steps/runtime/storage.py against a real S3 server (SeaweedFS on 127.0.0.1): listing, streaming, the errors
users meet."""
import pytest

from steps.runtime import storage
from steps.runtime.errors import ReviewflowError


@pytest.fixture
def bucket_objects(s3_env):
    client = storage.s3_client()
    keys = ["in/b.csv", "in/a.csv", "in/sub/c.parquet", "in/readme.txt"]
    for key in keys:
        client.put_object(Bucket=s3_env.bucket, Key=key, Body=f"data of {key}".encode())
    yield keys
    for key in keys:
        client.delete_object(Bucket=s3_env.bucket, Key=key)


def test_parse_and_endpoint_precedence(monkeypatch):
    assert storage.parse_s3("s3://bkt/a/b.csv") == storage.S3Location("bkt", "a/b.csv")
    with pytest.raises(ReviewflowError, match="no bucket name"):
        storage.parse_s3("s3:///key")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:3")
    monkeypatch.setenv("METAFLOW_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")
    assert storage.s3_endpoint() == ("http://127.0.0.1:1", "AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert storage.s3_endpoint() == ("http://127.0.0.1:2", "METAFLOW_S3_ENDPOINT_URL")
    monkeypatch.delenv("METAFLOW_S3_ENDPOINT_URL")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL")
    assert storage.s3_endpoint()[1] == "AWS_ENDPOINT_URL"  # the all-services setting (here: the tests' fail-fast)


def test_prefix_listing_and_streaming(s3_env, bucket_objects):
    listed = storage.list_objects(f"s3://{s3_env.bucket}/in/", suffixes=(".csv", ".parquet"))
    assert listed == [f"s3://{s3_env.bucket}/in/a.csv", f"s3://{s3_env.bucket}/in/b.csv",
                      f"s3://{s3_env.bucket}/in/sub/c.parquet"]
    assert storage.list_objects(f"s3://{s3_env.bucket}/in") == sorted(
        f"s3://{s3_env.bucket}/{k}" for k in bucket_objects)
    assert storage.list_objects(f"s3://{s3_env.bucket}/in/a.csv") == [f"s3://{s3_env.bucket}/in/a.csv"]
    assert storage.open_stream(f"s3://{s3_env.bucket}/in/a.csv").read() == b"data of in/a.csv"


def test_unreachable_endpoint_names_uri_and_setting(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "somekey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    with pytest.raises(ReviewflowError) as err:
        storage.check_bucket("s3://reviewflow/data.csv")
    message = str(err.value)
    assert "s3://reviewflow" in message and "cannot reach the S3 server" in message
    assert "AWS_ENDPOINT_URL_S3" in message and "super-secret-value" not in message


def test_missing_bucket_and_missing_object(s3_env):
    with pytest.raises(ReviewflowError, match="bucket 'no-such-bucket' does not exist"):
        storage.check_bucket("s3://no-such-bucket/x.csv")
    with pytest.raises(ReviewflowError, match="no such object"):
        storage.open_stream(f"s3://{s3_env.bucket}/nothing/here.csv").read()


def test_bad_credentials_do_not_leak_the_secret(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
    with pytest.raises(ReviewflowError) as err:
        storage.list_objects(f"s3://{s3_env.bucket}/in/")
    assert "rejected the credentials (SignatureDoesNotMatch)" in str(err.value)
    with pytest.raises(ReviewflowError) as head_err:  # HEAD answers carry no error code
        storage.check_bucket(f"s3://{s3_env.bucket}/x.csv")
    assert "S3 refused access (HTTP 403)" in str(head_err.value)
    for message in (str(err.value), str(head_err.value)):
        assert "wrong-secret-123" not in message and s3_env.secret_key not in message


def test_access_denied_names_the_key_prefix_only(s3_env, monkeypatch, bucket_objects):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "readonlykey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "readonly-secret-xyz")
    with pytest.raises(ReviewflowError) as err:
        storage.list_objects(f"s3://{s3_env.bucket}/in/")
    assert "access denied for key read…" in str(err.value)
    assert "readonly-secret-xyz" not in str(err.value)
