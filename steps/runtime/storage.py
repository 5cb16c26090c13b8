"""Storage: the one place that knows about S3 endpoints, credentials and what S3 errors mean to a user.

Local paths and `s3://bucket/key` URIs are both "locations". S3 goes through boto3 with the standard
credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles, ...) and an
endpoint taken, in this order, from the S3-specific AWS_ENDPOINT_URL_S3, METAFLOW_S3_ENDPOINT_URL,
MLFLOW_S3_ENDPOINT_URL, then the all-services AWS_ENDPOINT_URL (none set = AWS itself). Errors are turned into one
line that names the URI and the setting to fix, never the secret.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

from steps.runtime.errors import ReviewflowError

ENDPOINT_SETTINGS = ("AWS_ENDPOINT_URL_S3", "METAFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, name: str) -> S3Location:
        return S3Location(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    if not is_s3(uri):
        raise ReviewflowError(f"{uri}: not an s3:// URI")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ReviewflowError(f"{uri}: no bucket name; expected s3://bucket/key")
    return S3Location(bucket, key)


def s3_endpoint() -> tuple[str | None, str | None]:
    """(endpoint URL, the setting it came from); (None, None) means AWS's own endpoint."""
    for name in ENDPOINT_SETTINGS:
        value = os.environ.get(name)
        if value:
            return value, name
    return None, None


def s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client for `endpoint_url` or the configured endpoint; credentials are resolved afresh."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or s3_endpoint()[0]
    # A new session each time: boto3's default session caches the credentials it first found.
    return boto3.session.Session().client("s3", endpoint_url=endpoint,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                      connect_timeout=5, read_timeout=60))


def explain(err: Exception, uri: str) -> ReviewflowError:
    """One line a user can act on, for a boto3/botocore error met while accessing `uri`."""
    from botocore import exceptions as bx

    endpoint, setting = s3_endpoint()
    where = f"endpoint {endpoint} (from {setting})" if endpoint else "AWS's default S3 endpoint (no *_ENDPOINT_URL set)"
    if isinstance(err, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError)):
        return ReviewflowError(f"{uri}: cannot reach the S3 server at {where}; is it running? "
                               f"Check {setting or 'AWS_ENDPOINT_URL_S3'}.")
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return ReviewflowError(f"{uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "(or AWS_PROFILE).")
    if isinstance(err, bx.ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        location = parse_s3(uri) if is_s3(uri) else None
        if code in ("NoSuchBucket",) or (code == "404" and location and not location.key):
            return ReviewflowError(f"{uri}: bucket '{location.bucket if location else uri}' does not exist at "
                                   f"{where}; create it or fix the URI.")
        if code in ("NoSuchKey", "404", "NotFound"):
            return ReviewflowError(f"{uri}: no such object at {where}.")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return ReviewflowError(f"{uri}: S3 rejected the credentials ({code}); check AWS_ACCESS_KEY_ID / "
                                   "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE).")
        if code in ("AccessDenied", "Forbidden"):
            return ReviewflowError(f"{uri}: access denied for key {_access_key_hint()}; grant it read/write on "
                                   "the bucket or use other credentials.")
        if code == "403" or status == 403:  # a HEAD request: no error body tells which
            return ReviewflowError(f"{uri}: S3 refused access (HTTP 403) for key {_access_key_hint()}: wrong "
                                   "credentials or no permission on the bucket; check AWS_ACCESS_KEY_ID / "
                                   "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and the bucket's policy.")
        message = err.response.get("Error", {}).get("Message", "")
        return ReviewflowError(f"{uri}: S3 error {code or status} at {where}: {message}")
    return ReviewflowError(f"{uri}: {type(err).__name__}: {err}")


def _access_key_hint() -> str:
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    return f"{key[:4]}…" if key else "(from the AWS credential chain)"


@contextmanager
def guarded(uri: str):
    """Turn botocore errors raised inside the block into one ReviewflowError about `uri`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as err:
        raise explain(err, uri) from None


def _missing(err: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(err, ClientError) and str(err.response["Error"].get("Code")) in ("404", "NoSuchKey", "NotFound")


def list_objects(uri: str, suffixes: tuple[str, ...] | None = None, start_after: str = "") -> list[str]:
    """The object URIs under an s3:// prefix (or the object itself), sorted, optionally filtered by suffix.

    `start_after`: a key (relative to the prefix) after which to start; only keys sorting after it are listed.
    """
    location = parse_s3(uri)
    client = s3_client()
    with guarded(uri):
        if location.key and not location.key.endswith("/") and not start_after:
            try:
                client.head_object(Bucket=location.bucket, Key=location.key)
                return [uri]
            except Exception as err:
                if not _missing(err):
                    raise
        prefix = location.key.rstrip("/") + "/" if location.key else ""
        keys = []
        after = {"StartAfter": prefix + start_after} if start_after else {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix, **after):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
    keys = sorted(k for k in keys if not k.endswith("/") and (not suffixes or k.lower().endswith(suffixes)))
    return [f"s3://{location.bucket}/{k}" for k in keys]


def open_stream(uri: str):
    """A streaming, file-like body of one S3 object (read it sequentially; nothing is loaded up front)."""
    location = parse_s3(uri)
    with guarded(uri):
        return s3_client().get_object(Bucket=location.bucket, Key=location.key)["Body"]


def check_bucket(uri: str) -> None:
    """Fail early, with a clear message, if the bucket of `uri` is unreachable, missing or forbidden."""
    location = parse_s3(uri)
    with guarded(f"s3://{location.bucket}"):
        s3_client().head_bucket(Bucket=location.bucket)


def upload_file(local_path: str | os.PathLike, uri: str) -> str:
    """Copy a local file to the object `uri` (s3://bucket/key); a missing bucket, refused credentials or an
    unreachable endpoint is one ReviewflowError naming the URI and the setting to fix."""
    location = parse_s3(uri)
    if not location.key or location.key.endswith("/"):
        raise ReviewflowError(f"{uri}: no object key; give the full object name, e.g. s3://{location.bucket}/"
                              "predictions/preds.parquet")
    from boto3.exceptions import S3UploadFailedError

    try:
        with guarded(uri):
            s3_client().upload_file(str(local_path), location.bucket, location.key)
    except S3UploadFailedError as err:  # boto3 wraps the ClientError of a failed upload; unwrap what it says
        cause = err.__cause__ or err.__context__
        raise (explain(cause, uri) if cause is not None else ReviewflowError(f"{uri}: upload failed: {err}")) from None
    return uri


def delete_object(uri: str) -> None:
    """Remove the object `uri` (no error if it is already gone)."""
    location = parse_s3(uri)
    with guarded(uri):
        s3_client().delete_object(Bucket=location.bucket, Key=location.key)


class _StreamingRaw(io.RawIOBase):
    """A raw, read-only byte stream over a botocore StreamingBody, so io.BufferedReader can wrap it."""

    def __init__(self, body, uri: str):
        self._body = body
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with guarded(self._uri):
            data = self._body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@dataclass(frozen=True)
class S3Object:
    """One object, addressed like a file: `.name` and `.suffixes` as a Path has them, str() is the URI."""

    uri: str

    def __str__(self) -> str:
        return self.uri

    @property
    def _path(self) -> PurePosixPath:
        return PurePosixPath(parse_s3(self.uri).key)

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def suffixes(self) -> list[str]:
        return self._path.suffixes

    def open_binary(self) -> io.BufferedReader:
        """A buffered, sequential reader; the object is streamed, never loaded whole."""
        return io.BufferedReader(_StreamingRaw(open_stream(self.uri), self.uri), buffer_size=1 << 20)

    @contextmanager
    def local_copy(self):
        """The object downloaded to a temporary file (for formats that need random access, like Parquet)."""
        import tempfile

        location = parse_s3(self.uri)
        with tempfile.TemporaryDirectory(prefix="reviewflow-s3-") as tmp:
            target = os.path.join(tmp, self.name or "object")
            with guarded(self.uri):
                s3_client().download_file(location.bucket, location.key, target)
            yield target
