"""`mlflow server` on 127.0.0.1: runs and registry in SQLite or PostgreSQL, artifacts proxied to an S3 bucket, and
optionally MLflow's basic-auth app (HTTP basic authentication with a generated admin password).

With auth, anonymous requests get 401; the admin account is written to the environment file the services CLI
makes (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) and nowhere else; the auth database sits beside the
tracking store (its own PostgreSQL database, or a SQLite file in the state folder).
"""
from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import HOST, ServiceError, free_port, local_urlopen, port_free, stop_pid, wait_until

ADMIN = "admin"
# Seconds a verified login is remembered by the server process. MLflow checks a basic-auth password with scrypt
# on every request (0.40 CPU s per request measured here), which made the server the bottleneck of flows run
# against it; with the cache a login is checked once per minute (docs/environments.md, the team backend). The
# price, which MLflow documents: a password changed outside the server's API is still accepted until the entry
# expires.
AUTH_CACHE_SECONDS = 60


@dataclass
class MlflowServer:
    url: str
    backend_store_uri: str  # may hold a database password: never log it
    artifacts_destination: str
    pid: int
    log: str
    username: str = ""  # with basic auth: the admin account
    password: str = ""

    def env(self) -> dict:
        """Settings that point MLflow clients (and the flows) at this server."""
        settings = {"MLFLOW_TRACKING_URI": self.url}
        if self.username:
            settings.update(MLFLOW_TRACKING_USERNAME=self.username, MLFLOW_TRACKING_PASSWORD=self.password)
        return settings


def _auth_config(state_dir: Path, auth_database_uri: str, password: str, cache_seconds: int) -> Path:
    config = state_dir / "basic_auth.ini"
    text = "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {auth_database_uri}",
        f"admin_username = {ADMIN}",
        f"admin_password = {password}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        f"auth_cache_ttl_seconds = {int(cache_seconds)}",
        "",
    ])
    descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # a file left by an earlier start keeps its mode otherwise
        out.write(text)
    return config


def start_mlflow(state_dir: Path, artifacts_destination: str, s3_env: dict, port: int | None = None,
                 backend_store_uri: str | None = None, auth_database_uri: str | None = None, auth: bool = False,
                 timeout: float = 120.0, auth_cache_seconds: int = AUTH_CACHE_SECONDS) -> MlflowServer:
    """Start `mlflow server` (runs + registry in `backend_store_uri`, default SQLite in `state_dir`; artifacts
    proxied to `artifacts_destination`); with `auth`, behind basic authentication with a new admin password,
    a verified login remembered for `auth_cache_seconds` (0: every request checks the password)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if port and not port_free(port):
        raise ServiceError(f"port {port} on {HOST} is in use; choose another MLflow port (--mlflow-port)")
    port = port or free_port()
    backend = backend_store_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
    log = state_dir / "mlflow-server.log"
    # No job runner: its worker pool (GenAI jobs) costs ~2 GB of RAM that reviewflow never uses.
    env = {**os.environ, **s3_env, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env["MLFLOW_BACKEND_STORE_URI"] = backend  # not on the command line: ps shows a database password there
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--artifacts-destination", artifacts_destination, "--host", HOST, "--port", str(port), "--workers", "1"]
    password = ""
    if auth:
        password = secrets.token_urlsafe(24)
        auth_db = auth_database_uri or f"sqlite:///{state_dir / 'basic_auth.db'}"
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_config(state_dir, auth_db, password, auth_cache_seconds))
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(16)  # the auth app's CSRF protection needs one
        cmd += ["--app-name", "basic-auth"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=state_dir)
    url = f"http://{HOST}:{port}"
    server = MlflowServer(url, backend, artifacts_destination, proc.pid, str(log), ADMIN if auth else "", password)
    try:
        wait_until(lambda: _answers(server), f"mlflow server at {url}", timeout, proc, str(log))
    except Exception:
        stop_pid(proc.pid)
        raise
    return server


def _answers(server: MlflowServer) -> bool:
    """The server is up and, with auth, accepts its admin: a registry search, which needs both."""
    request = urllib.request.Request(f"{server.url}/api/2.0/mlflow/registered-models/search?max_results=1")
    if server.username:
        token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with local_urlopen(request, timeout=5) as response:
        return response.status == 200
