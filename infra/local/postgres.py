"""A real PostgreSQL on 127.0.0.1 from the distribution's binaries (initdb, pg_ctl), its data in a state folder.

The cluster is made with a random password for one role (scram-sha-256, no trust), listens on 127.0.0.1 only,
keeps its socket in the state folder, and gets the databases asked for. PostgreSQL refuses to run as root: when
this process is root, the server runs as the `postgres` system user that Debian's `postgresql` package creates.
That user must reach the folder: when a directory above it is closed to it (root's 0700 home, a 0700 temp folder),
the cluster's files go to a folder of their own under that user's home instead, named after the state folder (so
the same state folder finds the same cluster again), and the state folder says where (`server-files`).
"""
from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from infra.local.processes import HOST, ServiceError, free_port, port_free, wait_until

ROLE = "reviewflow"
SERVER_USER = "postgres"  # the system user the server runs as when we are root
INSTALL_HINT = "install the distribution's PostgreSQL server: apt-get install postgresql"


@dataclass
class PostgresServer:
    data_dir: str
    port: int
    user: str
    password: str
    log: str
    databases: tuple = ()

    def uri(self, database: str) -> str:
        """A SQLAlchemy URI for one of its databases (with the password: keep it out of logs and params)."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@{HOST}:{self.port}/{database}"


def binaries() -> Path:
    """The folder of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    raise ServiceError(f"PostgreSQL's initdb and pg_ctl were not found (PATH, /usr/lib/postgresql/*/bin): "
                       f"{INSTALL_HINT}")


def _version(folder: str) -> tuple:
    name = Path(folder).parent.name
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd

        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ServiceError(f"running as root, and PostgreSQL refuses to: there is no '{SERVER_USER}' user to run "
                           f"it as ({INSTALL_HINT} creates it), or start the services as an ordinary user") from None
    return ["runuser", "-u", SERVER_USER, "--", *cmd]


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SERVER_USER, SERVER_USER)


def _server_user_reaches(path: Path, test: str = "-x") -> bool:
    if os.geteuid() != 0:
        return True
    return subprocess.run(_as_server_user(["test", test, str(path)]), capture_output=True, timeout=30).returncode == 0


def _closed_to_server_user(path: Path) -> Path:
    """The first directory from / down to `path` that the server user cannot enter."""
    for folder in [*reversed(path.parents), path]:
        if not _server_user_reaches(folder):
            return folder
    return path


def server_files(state_dir: Path) -> Path:
    """Where the cluster's data, log, password file and socket go: `state_dir`, or, when this process is root and
    the server user cannot reach `state_dir`, a folder of the server user's own (see the module's docstring)."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    _give_to_server_user(state_dir)
    if _server_user_reaches(state_dir) and _server_user_reaches(state_dir, "-w"):
        return state_dir
    import pwd

    closed = _closed_to_server_user(state_dir)
    home = Path(pwd.getpwnam(SERVER_USER).pw_dir)
    moved = home / "reviewflow-clusters" / hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    try:
        moved.mkdir(parents=True, exist_ok=True)
        for folder in (moved.parent, moved):
            _give_to_server_user(folder)
        moved.chmod(0o700)
    except OSError as err:
        raise ServiceError(f"PostgreSQL runs as the '{SERVER_USER}' user here (this process is root), and that user "
                           f"cannot enter {closed}, so it cannot keep its files in {state_dir}; {moved} could not be "
                           f"made either ({err}). Pass a --state-dir that user can reach (e.g. --state-dir "
                           f"/var/tmp/reviewflow-services), or start the services as an ordinary user.") from None
    if not (_server_user_reaches(moved) and _server_user_reaches(moved, "-w")):
        raise ServiceError(f"PostgreSQL runs as the '{SERVER_USER}' user here (this process is root), and that user "
                           f"can reach neither {state_dir} ({closed} is closed to it) nor {moved}. Pass a --state-dir "
                           f"it can reach (e.g. --state-dir /var/tmp/reviewflow-services), or start the services as "
                           f"an ordinary user.")
    (state_dir / "server-files").write_text(f"{moved}\n(the '{SERVER_USER}' user cannot enter {closed})\n")
    return moved


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ServiceError(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}")


def start_postgres(state_dir: Path, databases: tuple = ("mlflow",), port: int | None = None,
                   timeout: float = 60.0) -> PostgresServer:
    """Initialize (first time) and start a cluster in `state_dir`; create `databases`; return once it answers."""
    import psycopg2

    if port and not port_free(port):
        raise ServiceError(f"port {port} on {HOST} is in use; choose another PostgreSQL port (--postgres-port)")
    port = port or free_port()
    bin_dir = binaries()
    state_dir = server_files(state_dir)  # checked before anything starts
    data_dir, log, password_file = state_dir / "data", state_dir / "postgres.log", state_dir / "password"
    if not (data_dir / "PG_VERSION").exists():
        password = secrets.token_urlsafe(24)
        password_file.write_text(password)
        password_file.chmod(0o600)
        _give_to_server_user(password_file)
        _run([str(bin_dir / "initdb"), "-D", str(data_dir), "-U", ROLE, f"--pwfile={password_file}",
              "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"], "initdb")
    password = password_file.read_text().strip()
    options = f"-c listen_addresses={HOST} -p {port} -k {state_dir}"
    _run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log), "-o", options, "-w", "-t", str(int(timeout)),
          "start"], f"pg_ctl start (log: {log})")
    server = PostgresServer(str(data_dir), port, ROLE, password, str(log), tuple(databases))

    def answers() -> bool:
        psycopg2.connect(host=HOST, port=port, user=ROLE, password=password, dbname="postgres",
                         connect_timeout=2).close()
        return True

    try:
        wait_until(answers, f"PostgreSQL on {HOST}:{port}", timeout, log=str(log))
        _create_databases(server, databases)
    except Exception:
        stop_postgres(str(data_dir))
        raise
    return server


def _create_databases(server: PostgresServer, databases) -> None:
    import psycopg2

    connection = psycopg2.connect(host=HOST, port=server.port, user=server.user, password=server.password,
                                  dbname="postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for database in databases:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{database}"')
    finally:
        connection.close()


def stop_postgres(data_dir: str) -> bool:
    """Stop the cluster (fast shutdown: clients disconnected, data flushed). True if it was running."""
    bin_dir = binaries()
    status = subprocess.run(_as_server_user([str(bin_dir / "pg_ctl"), "-D", data_dir, "status"]),
                            capture_output=True, text=True, timeout=30)
    if status.returncode != 0:
        return False
    _run([str(bin_dir / "pg_ctl"), "-D", data_dir, "-m", "fast", "-w", "stop"], "pg_ctl stop")
    return True
