"""PostgreSQL from the distribution's binaries, started as root from a folder its server user cannot enter (a
checkout under root's 0700 home, a 0700 temp folder): the cluster's files go where that user can reach them."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from infra.local import postgres
from infra.local.processes import ServiceError


@pytest.fixture
def closed_folder():
    if os.geteuid() != 0:
        pytest.skip("only a root process runs PostgreSQL as another user, whose reach matters")
    try:
        postgres.binaries()
    except ServiceError as err:
        pytest.skip(f"needs PostgreSQL: {err}")
    folder = Path(tempfile.mkdtemp(prefix="reviewflow-closed-"))  # mode 0700, owned by root
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_state_folder_the_server_user_cannot_enter_keeps_the_cluster_where_it_can(closed_folder):
    state = closed_folder / "checkout" / "infra" / "local" / ".state" / "postgres"
    server = postgres.start_postgres(state, ("mlflow",))
    moved = Path(server.data_dir).parent
    try:
        assert moved.parent == Path("/var/lib/postgresql/reviewflow-clusters") or moved.is_relative_to(
            Path(os.path.expanduser(f"~{postgres.SERVER_USER}")))
        note = (state / "server-files").read_text()
        assert note.splitlines()[0] == str(moved) and f"cannot enter {closed_folder}" in note
        import psycopg2

        psycopg2.connect(host="127.0.0.1", port=server.port, user=server.user, password=server.password,
                         dbname="mlflow", connect_timeout=5).close()
        assert postgres.stop_postgres(server.data_dir)
        again = postgres.start_postgres(state, ("mlflow",))  # the same state folder finds the same cluster
        assert (again.data_dir, again.password) == (server.data_dir, server.password)
        assert postgres.stop_postgres(again.data_dir)
    finally:
        postgres.stop_postgres(server.data_dir)
        shutil.rmtree(moved, ignore_errors=True)


def test_a_reachable_state_folder_is_used_as_it_is():
    folder = Path(tempfile.mkdtemp(prefix="reviewflow-open-"))
    try:
        folder.chmod(0o755)
        assert postgres.server_files(folder / "postgres") == (folder / "postgres").resolve()
        assert not (folder / "postgres" / "server-files").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
