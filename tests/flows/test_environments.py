"""Environments follow @project branches: a person's run, gate passed or not, never moves the production champion;
PromoteFlow --production --source copies a branch's version into production, gated against the production
champion on the version's own test rows, and audits the move."""
import pytest
from mlflow import MlflowClient

from steps.evaluation import gate
from steps.lifecycle import promotion, registry
from steps.runtime import tracking
from tests.fixtures import served_model_uri, write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, TINY_TRAINING, run_flow

pytestmark = pytest.mark.flow
PRODUCTION = "review-classifier"


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model_dir, classifier_dir):
    """A store whose production model has a champion (the untrained classifier), then one ReviewFlow run by a
    person (branch user.reviewflow-tests) that trains a far better model."""
    workdir = tmp_path_factory.mktemp("environments")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        parent = tracking.start_flow_run(uri, "ReviewFlow", "0", {})
        with tracking.step_run(uri, parent, "register", "ReviewFlow/0/register/1") as run:
            registry.register(run.client, PRODUCTION, served_model_uri(classifier_dir), "ReviewFlow/0", {},
                              verdict=gate.judge(0.8))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    trail_before = promotion.history(client, PRODUCTION)
    data = write_reviews_csv(workdir / "reviews.csv", rows=240)
    run, executing = run_flow("review_flow.py", workdir, data=str(data), model=str(tiny_model_dir), seed=3,
                              **TINY_TRAINING)
    assert executing.status == "successful", executing.stderr[-3000:]
    return workdir, client, run, executing, trail_before


def test_a_persons_run_registers_on_its_branch_and_leaves_production_alone(stores):
    workdir, client, run, executing, trail_before = stores
    assert run.data.registration["name"] == BRANCH_MODEL and run.data.registration["gate"] == "passed"
    assert promotion.alias_version(client, BRANCH_MODEL, promotion.CHAMPION) == 1
    assert promotion.alias_version(client, PRODUCTION, promotion.CHAMPION) == 1  # untouched
    assert promotion.history(client, PRODUCTION) == trail_before
    assert [int(v.version) for v in client.search_model_versions(f"name = '{PRODUCTION}'")] == [1]
    summary = run.data.run_summary
    assert f"load: mlflow.pyfunc.load_model('models:/{BRANCH_MODEL}@champion')" in summary
    assert (f"flows/promote_flow.py --production run --source models:/{BRANCH_MODEL}/1 "
            "--reason 'why'") in summary


def test_promote_flow_copies_a_branch_version_into_production_gated_and_audited(stores):
    workdir, client, run, executing, _ = stores
    promote, promoted = run_flow("promote_flow.py", workdir, top_level={"production": True},
                                 source=f"models:/{BRANCH_MODEL}/1", reason="tested on my branch")
    assert promoted.status == "successful", promoted.stderr[-3000:]
    copy = client.get_model_version(PRODUCTION, "2")
    assert copy.tags[promotion.COPIED_FROM] == f"{BRANCH_MODEL}/1"
    assert copy.tags["metaflow_run"] == run.pathspec  # lineage travels with the copy
    assert promotion.alias_version(client, PRODUCTION, promotion.CHAMPION) == 2
    entry = promotion.history(client, PRODUCTION)[-1]
    assert (entry["action"], entry["from_version"], entry["to_version"]) == ("promote", 1, 2)
    assert entry["reason"] == f"from {BRANCH_MODEL}/1: tested on my branch" and entry["gate"] == "passed"
    assert entry["metaflow_run"] == promote.pathspec
    assert "gate passed on" in promoted.stdout and f"of {run.pathspec}" in promoted.stdout
    # promoting the same source again makes no second copy and moves nothing
    _, again = run_flow("promote_flow.py", workdir, top_level={"production": True},
                        source=f"models:/{BRANCH_MODEL}/1", reason="again")
    assert again.status == "successful", again.stdout[-3000:] + again.stderr[-3000:]
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{PRODUCTION}'")) == [1, 2]
    assert "found the earlier copy" in again.stdout and "already is the champion" in again.stdout
