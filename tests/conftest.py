"""Shared test setup: offline, quiet, few threads; a tiny DistilBERT and small review files built here."""
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # on sys.path through pyproject.toml's pytest `pythonpath`

# Tests never reach the network: no Hub downloads, no telemetry.
# One fixed Metaflow user whoever runs the suite (CI sets its own USERNAME; Metaflow prefers METAFLOW_USER and
# SUDO_USER over it), so the client's default namespace always matches the runs the tests start.
os.environ.pop("SUDO_USER", None)
os.environ["METAFLOW_USER"] = os.environ["USERNAME"] = "reviewflow-tests"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# pytest runs two workers (pyproject.toml: -n 2); on a 2-core machine each gets one thread, or OpenMP threads spin
# waiting for a peer that is not scheduled (docs/benchmarks.md: Threads on a shared machine). The xdist controller loads
# this file first and the workers inherit its environment, so what the user set is remembered before any
# default is applied; a thread count the user set wins.
if "REVIEWFLOW_TEST_USER_THREADS" not in os.environ:
    os.environ["REVIEWFLOW_TEST_USER_THREADS"] = os.environ.get("OMP_NUM_THREADS", "")
_THREADS = os.environ["REVIEWFLOW_TEST_USER_THREADS"] or ("1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _THREADS
os.environ["TQDM_DISABLE"] = "1"
os.environ["GIT_PYTHON_REFRESH"] = "quiet"

from tests.fixtures import build_tiny_distilbert, write_reviews_csv  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def finished_review_flow_once(tmp_path_factory, tiny_model_dir):
    """One real ReviewFlow run (400 synthetic reviews, tiny DistilBERT) for the whole session, shared by the tests
    that only read what a finished run left behind (registry, MLflow runs, cards, the MLflow UI)."""
    from tests.flow_runs import TINY_TRAINING, run_flow

    workdir = tmp_path_factory.mktemp("review-flow")
    data = write_reviews_csv(workdir / "reviews.csv", rows=400)
    run, executing = run_flow("review_flow.py", workdir, data=str(data), model=str(tiny_model_dir),
                              seed=1, **TINY_TRAINING)
    assert executing.status == "successful", executing.stderr
    return run.pathspec, executing, workdir


@pytest.fixture
def finished_review_flow(finished_review_flow_once):
    """(metaflow Run, ExecutingRun, tracking URI) of the session's finished ReviewFlow run; the workdir is the
    tracking URI's folder. The Run is opened anew for each test: Metaflow's client keeps the local metadata root
    in a class attribute that every later Runner (another test's flow, elsewhere) repoints."""
    from tests.flow_runs import open_run

    pathspec, executing, workdir = finished_review_flow_once
    return open_run(pathspec, workdir), executing, f"sqlite:///{workdir / 'mlflow.db'}"


@pytest.fixture(scope="module")
def classifier_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model as a saved classifier (weights + tokenizer), as the train step packs it."""
    from steps.training.models import load_classifier, load_tokenizer

    path = tmp_path_factory.mktemp("classifier")
    load_classifier(str(tiny_model_dir)).save_pretrained(path)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(path)
    return str(path)


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    return write_reviews_csv(tmp_path / "reviews.csv", rows=160)


# Process-wide MLflow settings a test may change (mlflow.set_tracking_uri/set_registry_uri also write the URI
# variables, and set_*(None) does not remove them). Left behind, they silently point a later test's
# MlflowClient(tracking_uri=...) at another test's registry: its registry URI comes from them, not from the
# tracking URI. Restored after every test and after every module (module fixtures set them up front).
MLFLOW_PROCESS_SETTINGS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
                           "MLFLOW_TRACKING_PASSWORD")


@contextmanager
def _mlflow_settings_kept():
    saved = {key: os.environ.get(key) for key in MLFLOW_PROCESS_SETTINGS}
    try:
        yield
    finally:
        if "mlflow" in sys.modules:
            import mlflow

            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True, scope="module")
def _mlflow_settings_stay_in_their_module():
    with _mlflow_settings_kept():
        yield


@pytest.fixture(autouse=True)
def _mlflow_settings_stay_in_their_test():
    with _mlflow_settings_kept():
        yield


@pytest.fixture
def use_mlflow(monkeypatch):
    """Point this process's MLflow (tracking and registry) at a URI for one test, and undo it afterwards.

    mlflow.set_tracking_uri/set_registry_uri also export MLFLOW_*_URI to the environment, which flows run
    by later tests would inherit; the monkeypatched environment and the reset below keep tests apart.
    """
    import mlflow

    def use(uri: str) -> str:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        return uri

    yield use
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, use_mlflow) -> str:
    """A fresh SQLite MLflow store for one test; MLflow's default artifact root (./mlruns) lands there too."""
    monkeypatch.chdir(tmp_path)
    return use_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}")


# No test may reach a real cloud: boto3 without an explicit endpoint would go to AWS, and without credentials
# it would ask the EC2 metadata service. Point the default at a closed local port and switch IMDS off, so
# such a test fails fast; tests that need S3 start a real server (s3_server) and point at it explicitly.
os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for _name in ("AWS_ENDPOINT_URL_S3", "METAFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1 for the whole session, with bucket `reviewflow`."""
    from infra.local import processes, s3

    try:
        s3.which_weed()
    except processes.ServiceError as err:
        pytest.skip(f"S3 tests need the SeaweedFS binary: {err}")
    reader = {"name": "reader", "credentials": [{"accessKey": "readonlykey", "secretKey": "readonly-secret-xyz"}],
              "actions": ["Read"]}
    server = s3.start_s3(tmp_path_factory.mktemp("seaweedfs"), extra_identities=[reader])
    yield server
    processes.stop_pid(server.pid)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This test's process points at the session's S3 server (endpoint and credentials in the environment)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="module")
def profile(tiny_tokenizer, tiny_model_dir):
    """The training profile (steps/data/drift.py) of 400 synthetic reviews, as validate's drift check and
    MonitorFlow compare against it."""
    from steps.data.drift import training_profile
    from steps.data.split import split_reviews
    from steps.training.tokenize import tokenize_split
    from tests.fixtures import review_frame

    parts = split_reviews(review_frame(400), seed=1)
    tokens = tokenize_split(parts.frames(), tiny_tokenizer, 32)
    return training_profile(parts.train, tokens["train"], tokens["validation"], tiny_tokenizer,
                            str(tiny_model_dir), 32)
