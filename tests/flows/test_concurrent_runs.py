"""ReviewFlows started at the same moment, four on a fresh SQLite store and then two more on the same, existing one:
all finish, each registers its own version, the champion is one of them and the audit trail explains it.

The fresh store is where the races were (its schema migration, Metaflow's datastore folder); on the existing one
two runs are enough to contend for the promotion lock, and each run started costs the suite a minute."""
import os
import subprocess
import sys

import pytest

from steps.lifecycle import promotion
from tests.fixtures import write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, FLOWS, TINY_TRAINING, cli_options, flow_env, store_client

pytestmark = pytest.mark.flow
NAME = BRANCH_MODEL
FLOWS_AT_ONCE = 4  # on the fresh store
THEN_AT_ONCE = 2  # on the existing one


def start_together(workdir, data, model_dir, seeds, env: dict | None = None):
    """Start one `python flows/review_flow.py run` per seed, all at once, as people and schedulers do."""
    # a low gate floor: this is about concurrency, every run may take champion if it beats the current one
    options = cli_options({**TINY_TRAINING, "min_f1": 0.0})
    env = {**os.environ, **flow_env(workdir), **(env or {})}
    procs = [subprocess.Popen([sys.executable, str(FLOWS / "review_flow.py"), "run", f"--data={data}",
                               f"--model={model_dir}", f"--seed={seed}", *options],
                              cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for seed in seeds]
    outputs = [proc.communicate(timeout=900)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def check_registry(client, versions_expected):
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))
    assert versions == list(range(1, versions_expected + 1))  # one version per run, none lost or doubled
    champion = promotion.alias_version(client, NAME, promotion.CHAMPION)
    trail = promotion.history(client, NAME)
    assert champion is not None and promotion.champion_lineage(trail)[-1] == champion
    for before, after in zip(trail, trail[1:]):  # a chain: each move starts where the previous one ended
        assert after["from_version"] == before["to_version"]
    for version in client.search_model_versions(f"name = '{NAME}'"):
        if int(version.version) != champion:  # every other version says why it is not champion
            assert version.tags["gate"] in ("passed", "failed"), version.tags
    assert [m.name for m in client.search_registered_models()] == [NAME]  # no lock objects in the registry
    return champion, trail


def test_flows_at_once_on_a_fresh_store_and_on_an_existing_one(tmp_path, tiny_model_dir):
    data = write_reviews_csv(tmp_path / "reviews.csv", rows=240)
    start_together(tmp_path, data, tiny_model_dir, seeds=range(1, FLOWS_AT_ONCE + 1))  # fresh store and datastore
    client = store_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_registry(client, FLOWS_AT_ONCE)
    start_together(tmp_path, data, tiny_model_dir, seeds=range(11, 11 + THEN_AT_ONCE))  # the existing store
    champion, trail = check_registry(client, FLOWS_AT_ONCE + THEN_AT_ONCE)
    parents = client.search_runs([client.get_experiment_by_name("reviewflow").experiment_id],
                                 "tags.metaflow_flow = 'ReviewFlow'")
    assert len(parents) == FLOWS_AT_ONCE + THEN_AT_ONCE and {r.info.status for r in parents} == {"FINISHED"}
