"""Deployment on paper, compiled here: Argo Workflows template from the real flow, schedule files, k8s manifests."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.flow_runs import FLOWS, ROOT

pytestmark = pytest.mark.flow
K8S = ROOT / "infra" / "k8s"
SCHEDULE = ROOT / "infra" / "schedule"


def _json_objects(text: str) -> list[dict]:
    decoder, objects, at = json.JSONDecoder(), [], text.find("{")
    while at != -1:
        obj, length = decoder.raw_decode(text[at:])
        objects.append(obj)
        at = text.find("{", at + length)
    return objects


@pytest.fixture(scope="module")
def argo_template(s3_server, tmp_path_factory):
    return compiled_template("review_flow.py", s3_server, tmp_path_factory)


@pytest.fixture(scope="module")
def monitor_template(s3_server, tmp_path_factory):
    return compiled_template("monitor_flow.py", s3_server, tmp_path_factory)


@pytest.fixture(scope="module")
def predict_template(s3_server, tmp_path_factory):
    return compiled_template("predict_flow.py", s3_server, tmp_path_factory)


def compiled_template(flow_file, s3_server, tmp_path_factory, project=True):
    """`argo-workflows create --only-json` with infra/k8s/metaflow-config.json; only the S3 endpoint and the
    metadata provider are pointed at this machine (the code package is uploaded to the local S3 server)."""
    home = tmp_path_factory.mktemp("metaflow-home")
    shutil.copy(K8S / "metaflow-config.json", home / "config_k8s.json")
    env = {**os.environ, **s3_server.env(), "METAFLOW_HOME": str(home), "METAFLOW_PROFILE": "k8s",
           "METAFLOW_DATASTORE_SYSROOT_S3": f"s3://{s3_server.bucket}/deploy-test",
           "METAFLOW_DEFAULT_METADATA": "local", "USERNAME": "ci"}
    cmd = [sys.executable, str(FLOWS / flow_file), *(["--production"] if project else []), "--with", "kubernetes",
           "argo-workflows", "create", "--only-json"]  # as docs/retraining.md deploys them: production owns the model
    proc = subprocess.run(cmd, cwd=tmp_path_factory.mktemp("deploy"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (template,) = [o for o in _json_objects(proc.stdout) if o.get("kind") == "WorkflowTemplate"]
    return template


def test_argo_template_has_the_schedule_gpu_image_and_event_trigger(argo_template):
    annotations = argo_template["metadata"]["annotations"]
    assert json.loads(annotations["metaflow/cron"])["schedule"] == "17 3 * * *"
    assert json.loads(annotations["metaflow/triggers"]) == [{"name": "reviews_landed", "type": "event"}]
    assert annotations["metaflow/project_name"] == "reviewflow"
    assert annotations["metaflow/branch_name"] == "prod"
    parameters = {p["name"]: p for p in argo_template["spec"]["arguments"]["parameters"]}
    assert parameters["epochs"]["value"] == "0" and parameters["precision"]["value"] == '"auto"'  # from the settings
    assert argo_template["metadata"]["namespace"] == "reviewflow"
    containers = {t["name"]: t["container"] for t in argo_template["spec"]["templates"] if t.get("container")}
    steps = ["start", "ingest", "validate", "split", "tokenize", "train", "evaluate", "register", "end"]
    assert set(steps) <= set(containers)
    assert containers["train"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert all("nvidia.com/gpu" not in containers[s]["resources"]["limits"] for s in steps if s != "train")
    assert all(containers[s]["image"] == "reviewflow/train:2026.11" for s in steps)
    assert json.loads(annotations["metaflow/dag"])["graph_structure"][0] == "start"


def test_monitor_flow_is_scheduled_in_the_project_and_ships_the_library(monitor_template):
    annotations = monitor_template["metadata"]["annotations"]
    assert json.loads(annotations["metaflow/cron"])["schedule"] == "41 * * * *"
    assert annotations["metaflow/project_name"] == "reviewflow"
    assert json.loads(annotations.get("metaflow/triggers", "[]")) == []  # it raises the event; it is not triggered
    containers = {t["name"]: t["container"] for t in monitor_template["spec"]["templates"] if t.get("container")}
    assert {"start", "check", "end"} <= set(containers)
    assert all(containers[s]["image"] == "reviewflow/train:2026.11" for s in ("start", "check", "end"))
    assert all("nvidia.com/gpu" not in containers[s]["resources"]["limits"] for s in ("start", "check", "end"))
    env = {e["name"]: e.get("value") for e in containers["end"]["env"]}
    config = json.loads((K8S / "metaflow-config.json").read_text())
    assert env["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"] == config["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"]


def test_predict_flow_fans_its_shards_out_as_parallel_pods(predict_template):
    """--shards K is a foreach: Argo runs the predict template once per shard, side by side, each on its GPU."""
    templates = {t["name"]: t for t in predict_template["spec"]["templates"]}
    assert templates["predict"]["container"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # the flow's DAG fans out over the plan's splits (start's num-splits); each split's DAG runs one predict pod
    [fan_out] = [task for task in templates["PredictFlow"]["dag"]["tasks"] if task.get("withParam")]
    assert fan_out["withParam"] == "{{tasks.start.outputs.parameters.num-splits}}"
    assert [task["template"] for task in templates[fan_out["template"]]["dag"]["tasks"]] == ["predict"]
    assert "parallelism" not in templates[fan_out["template"]]  # the run-wide cap is `create --max-workers`:
    assert predict_template["spec"]["parallelism"] == 100  # Metaflow's default, far above a usual --shards
    parameters = {p["name"]: p["value"] for p in predict_template["spec"]["arguments"]["parameters"]}
    assert parameters["shards"] == "1" and {"data", "output", "model-uri"} <= set(parameters)


@pytest.fixture(scope="module")
def tune_template(s3_server, tmp_path_factory):
    return compiled_template("tune_flow.py", s3_server, tmp_path_factory, project=False)  # it registers nothing


def test_tune_flow_runs_its_workers_as_parallel_pods_on_one_study(tune_template):
    """--workers K is a foreach: one worker pod per worker, each with a GPU, side by side; the study is in the
    database they share (REVIEWFLOW_STUDY_STORAGE, from the reviewflow-env secret: see the manifests test)."""
    templates = {t["name"]: t for t in tune_template["spec"]["templates"]}
    assert templates["worker"]["container"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    [fan_out] = [task for task in templates["TuneFlow"]["dag"]["tasks"] if task.get("withParam")]
    assert fan_out["withParam"] == "{{tasks.split.outputs.parameters.num-splits}}"
    assert [task["template"] for task in templates[fan_out["template"]]["dag"]["tasks"]] == ["worker"]
    parameters = {p["name"]: p["value"] for p in tune_template["spec"]["arguments"]["parameters"]}
    assert parameters["workers"] == "2" and parameters["trials"] == "24" and {"space", "study"} <= set(parameters)


def test_argo_events_manifests_match_the_metaflow_config():
    """The webhook MonitorFlow publishes to, the event source and bus the ReviewFlow sensor listens on, and the
    sensor's service account are the ones metaflow-config.json names, in the namespace the sensors live in."""
    config = json.loads((K8S / "metaflow-config.json").read_text())
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all((K8S / "argo-events.yaml").read_text())}
    assert {d["metadata"]["namespace"] for d in docs.values()} == {config["METAFLOW_KUBERNETES_NAMESPACE"]}
    assert ("EventBus", config["METAFLOW_ARGO_EVENTS_EVENT_BUS"]) in docs
    source = docs[("EventSource", config["METAFLOW_ARGO_EVENTS_EVENT_SOURCE"])]
    webhook = source["spec"]["webhook"][config["METAFLOW_ARGO_EVENTS_EVENT"]]
    url = (f"http://{config['METAFLOW_ARGO_EVENTS_EVENT_SOURCE']}-eventsource-svc."
           f"{config['METAFLOW_KUBERNETES_NAMESPACE']}.svc.cluster.local:{webhook['port']}{webhook['endpoint']}")
    assert config["METAFLOW_ARGO_EVENTS_WEBHOOK_URL"] == url and webhook["method"] == "POST"
    assert source["spec"]["service"]["ports"][0]["port"] == int(webhook["port"])
    assert ("ServiceAccount", config["METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT"]) in docs
    [binding] = [d for (kind, _), d in docs.items() if kind == "RoleBinding"]
    assert binding["subjects"][0]["name"] == config["METAFLOW_ARGO_EVENTS_SERVICE_ACCOUNT"]


def test_k8s_manifests_parse_and_wire_mlflow_to_postgres_and_s3():
    docs = [d for f in ("mlflow.yaml", "secrets.example.yaml") for d in yaml.safe_load_all((K8S / f).read_text())]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [("ConfigMap", "mlflow-db-initdb"), ("Deployment", "mlflow"), ("Secret", "mlflow-db"),
                     ("Secret", "reviewflow-env"), ("Service", "mlflow"), ("Service", "mlflow-db"),
                     ("StatefulSet", "mlflow-db")]
    # TuneFlow's workers (pods) share one study: a database the PostgreSQL creates on its first start
    (initdb,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert initdb["data"]["optuna.sql"] == "CREATE DATABASE optuna;"
    (database,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = database["spec"]["template"]["spec"]
    assert {"name": "initdb", "mountPath": "/docker-entrypoint-initdb.d"} in pod["containers"][0]["volumeMounts"]
    assert pod["volumes"] == [{"name": "initdb", "configMap": {"name": "mlflow-db-initdb"}}]
    (env,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "reviewflow-env"]
    assert env["stringData"]["REVIEWFLOW_STUDY_STORAGE"].endswith("@mlflow-db.reviewflow.svc.cluster.local:5432/optuna")
    (server,) = [d for d in docs if d["kind"] == "Deployment"]
    args = " ".join(server["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "postgresql+psycopg2://" in args and "--artifacts-destination s3://reviewflow-artifacts/mlflow" in args
    config = json.loads((K8S / "metaflow-config.json").read_text())
    assert config["METAFLOW_DEFAULT_DATASTORE"] == "s3" and config["METAFLOW_KUBERNETES_SECRETS"] == "reviewflow-env"


def _readme_run_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"pip install -r requirements\.txt && (python flows/review_flow\.py run)", readme).group(1)


def test_cron_entry_and_systemd_units_run_the_readme_command():
    from croniter import croniter

    command = _readme_run_command()
    wrapper = (SCHEDULE / "retrain.sh").read_text()
    assert '"$python" flows/review_flow.py run' in wrapper and command == "python flows/review_flow.py run"
    entries = [line for line in (SCHEDULE / "reviewflow-retrain.cron").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert len(entries) == 1
    fields = entries[0].split(None, 5)
    assert croniter.is_valid(" ".join(fields[:5])) and fields[5] == "@REPO@/infra/schedule/retrain.sh"
    timer = (SCHEDULE / "reviewflow-retrain.timer").read_text()
    service = (SCHEDULE / "reviewflow-retrain.service").read_text()
    assert "ExecStart=@REPO@/infra/schedule/retrain.sh" in service
    assert " ".join(fields[:2][::-1]) == "3 17" and "OnCalendar=*-*-* 03:17:00" in timer  # same time of day


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed on this machine")
    for unit in ("reviewflow-retrain.service", "reviewflow-retrain.timer"):
        (tmp_path / unit).write_text((SCHEDULE / unit).read_text().replace("@REPO@", str(ROOT)))
    proc = subprocess.run([analyze, "verify", str(tmp_path / "reviewflow-retrain.timer"),
                           str(tmp_path / "reviewflow-retrain.service")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calendar = subprocess.run([analyze, "calendar", "*-*-* 03:17:00"], capture_output=True, text=True)
    assert "Normalized form: *-*-* 03:17:00" in calendar.stdout


def test_retrain_wrapper_logs_and_refuses_to_overlap(tmp_path):
    """Run the wrapper with a stand-in python that records its arguments; a held lock makes it skip."""
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\necho \"ran: $*\"\n")
    fake.chmod(0o755)
    log = tmp_path / "retrain.log"
    env = {**os.environ, "REVIEWFLOW_PYTHON": str(fake), "REVIEWFLOW_LOG": str(log),
           "REVIEWFLOW_RUN_ARGS": "--max-rows 100"}
    done = subprocess.run([str(SCHEDULE / "retrain.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert "ran: flows/review_flow.py run --max-rows 100" in text and "finished with exit code 0" in text
    lock = tmp_path / ".retrain.lock"  # beside the log
    with open(lock, "w") as held:
        import fcntl

        fcntl.flock(held, fcntl.LOCK_EX)
        skipped = subprocess.run([str(SCHEDULE / "retrain.sh")], env=env, capture_output=True, text=True)
    assert skipped.returncode == 0 and "previous run still in progress; skipping" in log.read_text()
