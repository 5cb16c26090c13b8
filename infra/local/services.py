"""Start and stop the services reviewflow needs on one machine: S3, an MLflow server, and for a team PostgreSQL.

    python infra/local/services.py start                       # SeaweedFS S3 + `mlflow server` (SQLite), 127.0.0.1
    python infra/local/services.py start --db postgres --auth  # the team setup: PostgreSQL, MLflow with basic auth
    source infra/local/.state/services.env                      # the settings that point reviewflow at them
    python infra/local/services.py status
    python infra/local/services.py stop

TuneFlow's studies go to a database `optuna` in the same PostgreSQL cluster (`--db postgres`), else to a SQLite
file beside the MLflow server's; the environment file names it (REVIEWFLOW_STUDY_STORAGE).
S3 is SeaweedFS (infra/local/s3.py), bound to 127.0.0.1 with one bucket and one generated access key. The MLflow
server (infra/local/mlflow_server.py) keeps runs and registry in SQLite or, with `--db postgres`, in a PostgreSQL
cluster made from the distribution's binaries (infra/local/postgres.py: initdb/pg_ctl, a random password, data in
the state folder), proxies artifacts to the bucket, and with `--auth` requires HTTP basic authentication (a
generated admin password). Everything is health-checked on start and stopped cleanly. Secrets go only into the
state folder's files, mode 0600: services.json and the environment file. The same functions start throw-away
servers in the tests.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: put the repository on sys.path as the flows do
    import runpy

    runpy.run_path(str(Path(__file__).resolve().parents[2] / "flows" / "flowkit" / "__init__.py"))

from infra.local.mlflow_server import MlflowServer, start_mlflow  # noqa: E402
from infra.local.postgres import start_postgres, stop_postgres  # noqa: E402
from infra.local.processes import ServiceError, alive, local_urlopen, stop_pid  # noqa: E402
from infra.local.s3 import DEFAULT_BUCKET, S3Server, s3_client, start_s3  # noqa: E402

STATE_DIR = Path(__file__).resolve().parent / ".state"
ENV_FILE = "services.env"


def env_file_text(s3: S3Server, mlflow_server: MlflowServer | None, datastore_prefix: str = "metaflow",
                  study_storage: str = "") -> str:
    settings = {
        **s3.env(),
        "METAFLOW_DEFAULT_DATASTORE": "s3",
        "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{s3.bucket}/{datastore_prefix}",
    }
    if mlflow_server:
        settings.update(mlflow_server.env())  # the server proxies artifacts to S3
    else:
        settings["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = f"s3://{s3.bucket}/mlflow"  # embedded SQLite, artifacts in S3
    if study_storage:
        settings["REVIEWFLOW_STUDY_STORAGE"] = study_storage  # TuneFlow's studies (steps/evaluation/tune.py)
    lines = ["# reviewflow on the local services (written by infra/local/services.py start; secrets: keep it 0600)"]
    lines += [f"export {k}={v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords and keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _load_state(state_dir: Path) -> dict | None:
    path = state_dir / "services.json"
    return json.loads(path.read_text()) if path.exists() else None


def cmd_start(args) -> int:
    state_dir = Path(args.state_dir)
    state = _load_state(state_dir)
    if state and alive(state["s3"]["pid"]):
        print(f"already running (S3 {state['s3']['endpoint']}); `stop` first", file=sys.stderr)
        return 1
    started = {"s3": None, "postgres": None, "mlflow": None}
    try:
        s3 = started["s3"] = start_s3(state_dir / "s3", bucket=args.bucket, port=args.s3_port)
        print(f"S3 (SeaweedFS) up at {s3.endpoint}, bucket s3://{s3.bucket}, log {s3.log}")
        mlflow_server = None
        if not args.no_mlflow:
            backend = auth_db = None
            study_storage = f"sqlite:///{(state_dir / 'mlflow' / 'optuna.db').resolve()}"
            if args.db == "postgres":
                postgres = started["postgres"] = start_postgres(
                    state_dir / "postgres", ("mlflow", "mlflow_auth", "optuna"), port=args.postgres_port)
                backend, auth_db = postgres.uri("mlflow"), postgres.uri("mlflow_auth")
                study_storage = postgres.uri("optuna")
                print(f"PostgreSQL up on 127.0.0.1:{postgres.port} (data {postgres.data_dir}, log {postgres.log})")
            mlflow_server = started["mlflow"] = start_mlflow(
                state_dir / "mlflow", f"s3://{s3.bucket}/mlartifacts", s3.env(), port=args.mlflow_port,
                backend_store_uri=backend, auth_database_uri=auth_db, auth=args.auth)
            print(f"MLflow server up at {mlflow_server.url} (runs + registry in {args.db}"
                  f"{', basic auth: user ' + mlflow_server.username if args.auth else ''}; artifacts "
                  f"{mlflow_server.artifacts_destination}), log {mlflow_server.log}")
    except Exception:
        _stop({name: asdict(server) if server else None for name, server in started.items()})
        raise
    state = {name: asdict(server) if server else None for name, server in started.items()}
    _write_private(state_dir / "services.json", json.dumps(state, indent=2))
    _write_private(state_dir / ENV_FILE, env_file_text(s3, mlflow_server,
                                                        study_storage=study_storage if mlflow_server else ""))
    print(f"Settings (with the generated passwords) written to {state_dir / ENV_FILE}, mode 0600; use them with:"
          f"\n  source {state_dir / ENV_FILE}")
    return 0


def _stop(state: dict) -> None:
    for name in ("mlflow", "postgres", "s3"):
        server = state.get(name)
        if not server:
            continue
        stopped = stop_postgres(server["data_dir"]) if name == "postgres" else stop_pid(server["pid"])
        print(f"{name}: {'stopped' if stopped else 'was not running'}")


def cmd_stop(args) -> int:
    state_dir = Path(args.state_dir)
    state = _load_state(state_dir)
    if not state:
        print("nothing to stop")
        return 0
    _stop(state)
    (state_dir / "services.json").unlink(missing_ok=True)
    return 0


def cmd_status(args) -> int:
    state = _load_state(Path(args.state_dir))
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
    if state.get("postgres"):
        port = state["postgres"]["port"]
        up = alive_postgres(state["postgres"])
        healthy &= up
        print(f"postgres: {'healthy' if up else 'NOT healthy'} on 127.0.0.1:{port}")
    if state.get("mlflow"):
        url = state["mlflow"]["url"]
        try:
            with local_urlopen(f"{url}/health", timeout=2):
                print(f"mlflow: healthy at {url}")
        except Exception as err:
            healthy = False
            print(f"mlflow: NOT healthy at {url}: {type(err).__name__}")
    return 0 if healthy else 1


def alive_postgres(server: dict) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=server["port"], user=server["user"], password=server["password"],
                         dbname="postgres", connect_timeout=2).close()
    except psycopg2.Error:
        return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=str(STATE_DIR),
                        help=f"where data, logs, passwords and {ENV_FILE} live (default {STATE_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start S3, the MLflow server and (--db postgres) PostgreSQL on 127.0.0.1")
    start.add_argument("--bucket", default=DEFAULT_BUCKET)
    start.add_argument("--s3-port", type=int, default=8333, help="S3 port on 127.0.0.1 (default 8333)")
    start.add_argument("--mlflow-port", type=int, default=5000, help="MLflow port on 127.0.0.1 (default 5000)")
    start.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite",
                       help="where the MLflow server keeps runs and the registry (default sqlite)")
    start.add_argument("--postgres-port", type=int, default=0, help="PostgreSQL port (default: a free one)")
    start.add_argument("--auth", action="store_true",
                       help="MLflow's basic-auth app: requests need the generated admin account")
    start.add_argument("--no-mlflow", action="store_true", help="start only the S3 server")
    start.set_defaults(func=cmd_start)
    sub.add_parser("stop", help="stop every service started").set_defaults(func=cmd_stop)
    sub.add_parser("status", help="health-check every service started").set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
