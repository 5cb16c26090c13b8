"""The team backend for real: PostgreSQL from the distribution's binaries, `mlflow server` on it with basic auth and
artifacts in SeaweedFS, all on 127.0.0.1 and started here. ReviewFlow, PromoteFlow and PredictFlow run against it
with the credentials; without them the flow stops at once with one line naming the settings; no password or key
ends up in a log, an MLflow param, tag or artifact, or a Metaflow artifact; three flows started at once all finish."""
import pickle
import stat
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from infra.local import postgres
from infra.local.mlflow_server import start_mlflow
from infra.local.processes import ServiceError, stop_pid
from tests.fixtures import write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, TINY_TRAINING, run_flow, store_client

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def team(s3_server, tiny_model_dir):
    """PostgreSQL + MLflow (basic auth, artifacts in the session's S3 bucket) for this module."""
    try:
        postgres.binaries()
    except ServiceError as err:
        pytest.skip(f"the team backend needs PostgreSQL: {err}")
    # PostgreSQL runs as the `postgres` user when the tests run as root: its folder must be reachable by it
    state = Path(tempfile.mkdtemp(prefix="reviewflow-team-"))
    state.chmod(state.stat().st_mode | stat.S_IRWXU | stat.S_IXOTH | stat.S_IROTH)
    database = postgres.start_postgres(state / "postgres", ("mlflow", "mlflow_auth", "optuna"))
    prefix = f"team-{uuid.uuid4().hex[:8]}"
    try:
        server = start_mlflow(state / "mlflow", f"s3://{s3_server.bucket}/{prefix}/mlartifacts", s3_server.env(),
                              backend_store_uri=database.uri("mlflow"),
                              auth_database_uri=database.uri("mlflow_auth"), auth=True)
    except Exception:
        postgres.stop_postgres(database.data_dir)
        raise
    env = {**s3_server.env(), **server.env(), "METAFLOW_DEFAULT_DATASTORE": "s3",
           "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{s3_server.bucket}/{prefix}/metaflow",
           "METAFLOW_S3_RETRY_COUNT": "1"}
    secrets = {"MLflow admin password": server.password, "PostgreSQL password": database.password,
               "S3 secret key": s3_server.secret_key}
    yield server, database, env, secrets
    stop_pid(server.pid)
    postgres.stop_postgres(database.data_dir)


def test_requests_without_credentials_are_refused_and_the_flow_says_which_settings(team, tmp_path, tiny_model_dir):
    server, _, env, secrets = team
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert refused.value.code == 401
    anonymous = {k: v for k, v in env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    data = write_reviews_csv(tmp_path / "reviews.csv", rows=80)
    _, executing = run_flow("review_flow.py", tmp_path, env={**anonymous, "MLFLOW_TRACKING_USERNAME": "",
                                                             "MLFLOW_TRACKING_PASSWORD": ""},
                            data=str(data), model=str(tiny_model_dir), **TINY_TRAINING)
    assert executing.status == "failed"
    expected = (f"the MLflow server at {server.url} requires a login (HTTP 401): MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD are not set")
    assert expected in executing.stdout + executing.stderr
    assert not any(secret in executing.stdout + executing.stderr for secret in secrets.values())


@pytest.fixture(scope="module")
def team_runs(team, tmp_path_factory, tiny_model_dir):
    """ReviewFlow, then PromoteFlow (history), PredictFlow and TuneFlow (its study in PostgreSQL), against the team
    backend."""
    server, database, env, _ = team
    workdir = tmp_path_factory.mktemp("team-flows")
    data = write_reviews_csv(workdir / "reviews.csv", rows=240)
    review, review_run = run_flow("review_flow.py", workdir, env=env, data=str(data), model=str(tiny_model_dir),
                                  seed=3, **TINY_TRAINING)
    assert review_run.status == "successful", review_run.stdout[-3000:] + review_run.stderr[-3000:]
    assert "now champion" in review_run.stdout, review_run.stdout[-3000:]  # PredictFlow scores with it
    promote, promote_run = run_flow("promote_flow.py", workdir, env=env, history=True)
    assert promote_run.status == "successful", promote_run.stdout[-3000:] + promote_run.stderr[-3000:]
    predict, predict_run = run_flow("predict_flow.py", workdir, env=env, data=str(data),
                                    output=str(workdir / "preds.csv"))
    assert predict_run.status == "successful", predict_run.stdout[-3000:] + predict_run.stderr[-3000:]
    tune, tune_run = run_flow("tune_flow.py", workdir, env={**env, "REVIEWFLOW_STUDY_STORAGE": database.uri("optuna")},
                              data=str(data), model=str(tiny_model_dir), trials=2, workers=2, max_length=32,
                              study="team-study")
    assert tune_run.status == "successful", tune_run.stdout[-3000:] + tune_run.stderr[-3000:]
    return workdir, {"review": (review, review_run), "promote": (promote, promote_run),
                     "predict": (predict, predict_run), "tune": (tune, tune_run)}


def test_the_flows_run_against_postgresql_behind_auth_with_artifacts_in_s3(team, team_runs, monkeypatch):
    server, _, env, _ = team
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = store_client(server.url)
    versions = client.search_model_versions(f"name = '{BRANCH_MODEL}'")
    assert [int(v.version) for v in versions] == [1]
    assert client.get_model_version_by_alias(BRANCH_MODEL, "champion").version == "1"
    workdir, runs = team_runs
    scored = (workdir / "preds.csv").read_text().splitlines()
    assert len(scored) == 241 and scored[0].endswith("model_name,model_version")
    run = client.get_run(client.search_runs([client.get_experiment_by_name("reviewflow").experiment_id],
                                            "tags.metaflow_flow = 'ReviewFlow'")[0].info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server into the S3 bucket


def test_the_tuning_study_lives_in_postgresql(team, team_runs, monkeypatch):
    import optuna

    server, database, env, _ = team
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    study = optuna.load_study(study_name="team-study", storage=database.uri("optuna"))
    assert sum(t.state.is_finished() for t in study.trials) == 2
    assert len({t.user_attrs["pid"] for t in study.trials}) >= 1 and study.user_attrs["key.model"]
    tune, _ = team_runs[1]["tune"]
    parent = store_client(server.url).search_runs(
        [store_client(server.url).get_experiment_by_name("reviewflow").experiment_id],
        f"tags.metaflow_run = '{tune.pathspec}'")[0]
    assert parent.data.params["storage"] == f"postgresql+psycopg2://{database.user}:***@127.0.0.1:{database.port}/optuna"


def test_no_password_or_key_in_logs_params_tags_or_artifacts(team, team_runs, tmp_path, monkeypatch):
    import mlflow

    server, _, env, secrets = team
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    workdir, runs = team_runs
    client = store_client(server.url)
    mlflow.set_tracking_uri(server.url)
    found = []
    for name, (run, executing) in runs.items():
        for what, secret in secrets.items():
            if secret in executing.stdout + executing.stderr:
                found.append(f"{what} in the output of {name}")
        for step in run:
            for task in step:
                for artifact in task:
                    blob = pickle.dumps(artifact.data)
                    found += [f"{what} in Metaflow artifact {task.pathspec}/{artifact.id}"
                              for what, secret in secrets.items() if secret.encode() in blob]
    experiments = [e.experiment_id for e in client.search_experiments()]
    for mlflow_run in client.search_runs(experiments):
        text = repr(mlflow_run.data.params) + repr(mlflow_run.data.tags)
        found += [f"{what} in params/tags of {mlflow_run.info.run_name}" for what, s in secrets.items() if s in text]
        local = mlflow.artifacts.download_artifacts(run_id=mlflow_run.info.run_id,
                                                    dst_path=str(tmp_path / mlflow_run.info.run_id))
        found += _in_files(Path(local), secrets)
    for model in mlflow.search_logged_models(experiment_ids=experiments, output_format="list"):
        text = repr(model.params) + repr(model.tags)
        found += [f"{what} in the logged model {model.model_id}" for what, s in secrets.items() if s in text]
        local = mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp_path / "m"))
        found += _in_files(Path(local), secrets)
    for version in client.search_model_versions(f"name = '{BRANCH_MODEL}'"):
        found += [f"{what} in tags of v{version.version}" for what, s in secrets.items() if s in repr(version.tags)]
    assert not found


def _in_files(folder: Path, secrets: dict) -> list[str]:
    return [f"{what} in {file}" for file in folder.rglob("*") if file.is_file()
            for what, secret in secrets.items() if secret.encode() in file.read_bytes()]


def test_flows_at_once_against_the_team_backend(team, tmp_path, tiny_model_dir, monkeypatch):
    from tests.flows.test_concurrent_runs import check_registry, start_together

    server, _, env, _ = team
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = len(store_client(server.url).search_model_versions(f"name = '{BRANCH_MODEL}'"))
    data = write_reviews_csv(tmp_path / "reviews.csv", rows=240)
    start_together(tmp_path, data, tiny_model_dir, seeds=range(21, 24), env=env)  # three: each costs a minute
    check_registry(store_client(server.url), before + 3)
