"""Crash-safe runs, for real: one ReviewFlow run is broken at every step in turn, and `resume` picks it up each time.

The chain: `run` fails at start; `resume` dies in ingest (the whole run SIGKILLed, runtime and task, as when a
machine is lost); the next `resume` fails at validate, then split, then tokenize; dies in train after epoch 1's
checkpoint; the next resume continues training from epoch 1, its task alone is SIGKILLed after epoch 2 and @retry
continues from epoch 2, then evaluate fails (on both attempts); registering fails after the version exists and
before its aliases are set (both attempts); the run dies in end; a last `resume` completes. Every hop re-runs the
step that broke before and clones the steps before it. At the end: one registered version, promoted once, one
MLflow parent run holding every step's runs (FAILED or KILLED where they broke, none RUNNING), and the model an
uninterrupted run with the same data and seed trains (a second run, --force-retrain, compared within
METRIC_TOLERANCE).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from metaflow import Run
from mlflow import MlflowClient

from steps.data.validate import stored_split
from steps.runtime.faults import FAIL_AT
from tests.fixtures import write_reviews_csv
from tests.flow_runs import BRANCH_MODEL, FLOWS, TINY_TRAINING, card_components, cli_options, flow_env, open_run, runner

pytestmark = pytest.mark.flow

STEPS = ["start", "ingest", "validate", "split", "tokenize", "train", "evaluate", "register", "end"]
SETTINGS = {**TINY_TRAINING, "patience": 4, "seed": 3}  # patience 4: all 4 epochs run, interrupted or not
HANG = "=hang"  # the task waits at the fault point; the test then SIGKILLs the whole run
# (REVIEWFLOW_FAIL_AT for this hop, the step that breaks)
CHAIN = [
    ("start", "start"),
    ("ingest=hang", "ingest"),
    ("validate", "validate"),
    ("split", "split"),
    ("tokenize", "tokenize"),
    ("train/after_epoch_1=hang", "train"),
    ("train/after_epoch_2=kill@first,evaluate", "evaluate"),  # the train task alone is killed: @retry goes on
    ("register/after_version", "register"),
    ("end=hang", "end"),
    (None, None),
]
RETRIED = {"evaluate", "register"}  # they raise on every attempt: @retry tried them a second time
METRIC_TOLERANCE = 1e-6  # CPU, fixed seed and threads: in practice bit-identical


@dataclass
class Hop:
    fault: str | None
    run_id: str
    returncode: int
    log: str

    def cloned(self) -> list[str]:
        return re.findall(r"Cloning previously run task \d+/(\w+)/\d+", self.log)

    def started(self) -> list[str]:
        return re.findall(rf"\[{self.run_id}/(\w+)/\d+ \(pid \d+\)\] Task is starting\.", self.log)

    def task_log(self, step: str) -> str:
        return "".join(line + "\n" for line in self.log.splitlines() if f"[{self.run_id}/{step}/" in line)


def cli_args(params: dict) -> list[str]:
    return cli_options(params)


def hang_point(fault: str | None) -> str | None:
    for entry in (fault or "").split(","):
        if entry.endswith(HANG):
            return entry[:-len(HANG)]
    return None


def launch(workdir: Path, command: list[str], fault: str | None, timeout: float = 600) -> Hop:
    """Run `review_flow.py <command>` with REVIEWFLOW_FAIL_AT=fault in its own process group. At a hanging fault
    the test SIGKILLs the group: the runtime and the task die at once, nothing is retried or cleaned up."""
    env = {**os.environ, **flow_env(workdir), "PYTHONUNBUFFERED": "1"}
    env.pop(FAIL_AT, None)
    if fault:
        env[FAIL_AT] = fault
    proc = subprocess.Popen([sys.executable, str(FLOWS / "review_flow.py"), *command], cwd=workdir, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_group():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    watchdog = threading.Timer(timeout, kill_group)
    watchdog.start()
    hang, lines = hang_point(fault), []
    try:
        for line in proc.stdout:
            lines.append(line)
            if hang and f"{FAIL_AT}: injected fault at {hang} " in line:
                kill_group()
        returncode = proc.wait()
    finally:
        watchdog.cancel()
        kill_group()
    log = "".join(lines)
    number = len(list(workdir.glob("hop-*.log")))
    (workdir / f"hop-{number}.log").write_text(f"{command} {FAIL_AT}={fault}\n{log}")  # to read when a test fails
    started = re.search(r"Workflow starting \(run-id (\d+)\)", log)
    assert started, log
    return Hop(fault, started.group(1), returncode, log)


def run_data(workdir: Path, run_id: str) -> Run:
    return open_run(f"ReviewFlow/{run_id}", workdir)


def flow_params(workdir: Path, tiny_model_dir) -> dict:
    return {"data": str(workdir / "reviews.csv"), "model": str(tiny_model_dir), **SETTINGS}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume-chain")
    write_reviews_csv(workdir / "reviews.csv", rows=240)
    return workdir


@pytest.fixture(scope="module")
def chain(workdir, tiny_model_dir):
    """The hops, and the MLflow store as the chain left it (read here, before another run writes to it)."""
    from steps.lifecycle.promotion import history

    hops = []
    for fault, _ in CHAIN:
        if not hops:
            command = ["run", *cli_args(flow_params(workdir, tiny_model_dir))]
        elif len(hops) == 1:
            command = ["resume"]  # the latest run started with `run`
        else:  # a plain `resume` would take that first run again: Metaflow never makes a resume the latest run
            command = ["resume", "--origin-run-id", hops[-1].run_id]
        hops.append(launch(workdir, command, fault))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("reviewflow")
    store = {
        "versions": client.search_model_versions(f"name = '{BRANCH_MODEL}'"),
        "aliases": client.get_registered_model(BRANCH_MODEL).aliases,
        "audit": history(client, BRANCH_MODEL),
        "runs": client.search_runs([experiment.experiment_id], max_results=1000),
    }
    return hops, store


def test_every_hop_breaks_at_its_step_and_reruns_only_from_the_step_that_broke_before(chain):
    hops, _ = chain
    for index, (hop, (fault, broken)) in enumerate(zip(hops, CHAIN)):
        previous = CHAIN[index - 1][1] if index else None
        first_rerun = STEPS.index(previous) if previous else 0
        assert sorted(hop.cloned()) == sorted(STEPS[:first_rerun]), hop.log  # cloned in no particular order
        last = STEPS.index(broken) + 1 if broken else len(STEPS)
        assert list(dict.fromkeys(hop.started())) == STEPS[first_rerun:last], hop.log
        if broken is None:
            assert hop.returncode == 0 and "Done!" in hop.log, hop.log
        elif hang_point(fault):
            assert hop.returncode == -signal.SIGKILL and "Workflow failed" not in hop.log, hop.log
        else:
            assert hop.returncode != 0 and f"Step {broken} (task-id" in hop.log and "Workflow failed." in hop.log
            assert f"{FAIL_AT}: injected fault at {fault.split(',')[-1]} (raise, attempt 0)" in hop.log
            if broken != "start":  # a crash in a step says how to continue this very run
                assert f"review_flow.py resume --origin-run-id {hop.run_id}" in hop.log, hop.log
            if broken in RETRIED:  # ... once its retries are spent; before that, that it will be retried
                assert f"/{broken}/" in hop.log and "failed on attempt 1 of 2; @retry runs it again." in hop.log
        retried = re.search(rf"\[{hop.run_id}/{broken}/\d+ \(pid \d+\)\] Task is starting \(retry\)", hop.log)
        assert bool(retried) == (broken in RETRIED), hop.log  # @retry(times=0) and SIGKILLed runs: no retry


def test_training_killed_mid_run_continues_from_the_last_epoch_checkpoint(chain, workdir):
    hops, _ = chain
    killed, resumed = hops[5], hops[6]
    assert "checkpoint of epoch 1 saved to " in killed.task_log("train")
    assert "epoch 2/4:" not in killed.task_log("train")  # SIGKILLed after epoch 1, before epoch 2 ended
    train = resumed.task_log("train").split("Task is starting (retry)")
    assert len(train) == 2  # the first attempt was SIGKILLed after epoch 2; @retry ran the task again
    origin = workdir / ".metaflow" / "reviewflow-checkpoints" / "ReviewFlow" / killed.run_id / "train"
    own = origin.parent.parent / resumed.run_id / "train"
    assert f"resuming from checkpoint epoch 1 ({origin})" in train[0]  # from the resumed run's checkpoint
    assert "epoch 1/4:" not in train[0] and "epoch 2/4:" in train[0] and "epoch 3/4:" not in train[0]
    assert f"resuming from checkpoint epoch 2 ({own})" in train[1]  # the retry: from its own run's checkpoint
    assert "epoch 2/4:" not in train[1] and "epoch 4/4:" in train[1]
    final = run_data(workdir, hops[-1].run_id)
    assert final.data.train_summary["resumed_from_epoch"] == 2 and final.data.train_summary["epochs_run"] == 4
    card = "\n".join(c["source"] for c in card_components(final["train"].task, "training") if c["type"] == "markdown")
    assert "**Resumed**: epochs 1-2 (" in card and "this attempt trained epochs 3-4" in card
    assert (origin / "checkpoint.pt").is_file()  # the resumed run's checkpoint is left for another resume
    assert not own.exists()  # its own: cleared once the trained model was stored


def test_the_chain_ends_with_one_version_registered_once_and_promoted_once(chain, workdir):
    hops, store = chain
    final = run_data(workdir, hops[-1].run_id)
    assert final.successful and [int(v.version) for v in store["versions"]] == [1]
    version = store["versions"][0]
    registering, completing = hops[7], hops[8]  # failed after registering (both attempts), then completed
    assert version.tags["metaflow_run"] == f"ReviewFlow/{registering.run_id}"
    assert version.tags["trained_by"] == final.data.trained_by
    assert final.data.trained_by.startswith(f"ReviewFlow/{hops[6].run_id}/train/")  # the task that trained it
    assert version.tags["data_fingerprint"] == final.data.fingerprint
    first, retry = registering.task_log("register").split("Task is starting (retry)")
    assert "already holds this model" not in first and "already holds this model" in retry
    assert "already holds this model" in completing.task_log("register")
    assert {k: int(v) for k, v in store["aliases"].items()} == {"challenger": 1, "champion": 1}
    assert [(e["from_version"], e["to_version"], e["metaflow_run"]) for e in store["audit"]] == [
        (None, 1, f"ReviewFlow/{completing.run_id}")]
    registration = final.data.registration
    assert (registration["version"], registration["created"], registration["promoted"]) == (1, False, True)
    assert "(found from an earlier attempt; not duplicated)" in hops[-1].log
    assert sum(len(final.data.tokens[name]) for name in ("train", "validation", "test")) == 240
    assert final.data.test_metrics["accuracy"] >= 0.85


def test_one_mlflow_parent_run_holds_every_step_and_nothing_stays_running(chain):
    hops, store = chain
    runs = store["runs"]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # no orphan parent runs
    assert parent.info.status == "FINISHED" and parent.data.tags["outcome"] == "train"
    assert parent.data.tags["metaflow_run"] == f"ReviewFlow/{hops[1].run_id}"  # hop 0 died before making it
    assert parent.data.tags["metaflow_resumed_in"].split(",") == [f"ReviewFlow/{h.run_id}" for h in hops[2:]]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1
    statuses = {}
    for child in sorted(children, key=lambda r: r.info.start_time):
        statuses.setdefault(child.info.run_name, []).append(child.info.status)
    assert statuses == {
        "ingest": ["KILLED", "FINISHED"],  # SIGKILLed with its run; closed when the resumed ingest started
        "validate": ["FAILED", "FINISHED"],
        "split": ["FAILED", "FINISHED"],
        "tokenize": ["FAILED", "FINISHED"],
        "train": ["KILLED", "KILLED", "FINISHED"],  # the run SIGKILLed; then the task alone, before its @retry
        "evaluate": ["FAILED", "FAILED", "FINISHED"],  # an attempt and its @retry
        "register": ["FAILED", "FAILED", "FINISHED"],
    }
    lineage = {f"ReviewFlow/{h.run_id}" for h in hops}
    for child in children:
        assert "/".join(child.data.tags["metaflow_pathspec"].split("/")[:2]) in lineage
        if child.info.status == "KILLED":
            assert "its process died before the step finished" in child.data.tags["reviewflow.closed_reason"]
    finished_train = next(c for c in children if c.info.run_name == "train" and c.info.status == "FINISHED")
    (summary_line,) = [line for line in hops[-1].log.splitlines() if "| MLflow train: " in line]
    assert finished_train.info.run_id in summary_line  # the attempt that holds the curves, not a killed one
    assert "MLflow: step run train (ReviewFlow/" in hops[6].task_log("train")
    assert "was left RUNNING by a process that died; marked KILLED" in hops[6].task_log("train")


@pytest.fixture(scope="module")
def rerun(chain, workdir, tiny_model_dir):
    """The champion's data, model and settings once more, trained without interruption (--force-retrain)."""
    executing = runner("review_flow.py", workdir).run(**flow_params(workdir, tiny_model_dir), force_retrain=True,
                                                      promote="never")
    assert executing.status == "successful", executing.stderr
    return executing.run


def test_same_data_model_settings_and_seed_reproduce_the_interrupted_champion_run(chain, rerun, workdir):
    """Same split, same training history and test metrics as the killed-and-resumed run, within the tolerance."""
    hops, _ = chain
    champion, again = run_data(workdir, hops[-1].run_id).data, rerun.data
    assert again.train_summary["resumed_from_epoch"] == 0
    assert again.fingerprint == champion.fingerprint
    for part in ("train", "validation", "test"):
        ours, theirs = stored_split(again, part), stored_split(champion, part)
        assert ours["reviewId"].tolist() == theirs["reviewId"].tolist()
        assert ours["reviewText"].tolist() == theirs["reviewText"].tolist()

    def without_time(history):
        return [{k: v for k, v in epoch.items() if k not in ("epoch_seconds", "epoch_samples_per_s")}
                for epoch in history]

    for ours, theirs in zip(without_time(again.history), without_time(champion.history), strict=True):
        assert ours == pytest.approx(theirs, abs=METRIC_TOLERANCE)
    assert set(again.step_history) == set(champion.step_history)  # the per-step curve: epochs 1-2 from checkpoints
    for key, ours in again.step_history.items():
        assert ours == pytest.approx(champion.step_history[key], abs=METRIC_TOLERANCE), key
    for key in ("accuracy", "f1", "roc_auc"):
        assert again.test_metrics[key] == pytest.approx(champion.test_metrics[key], abs=METRIC_TOLERANCE)
    comparison = again.champion_comparison  # scored against the registered champion on the same test rows
    assert comparison["champion_version"] == 1
    assert all(abs(delta) <= METRIC_TOLERANCE for delta in comparison["delta"].values()), comparison
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    first, second = (client.get_model_version(BRANCH_MODEL, v) for v in ("1", "2"))
    assert second.tags["training_signature"] == first.tags["training_signature"]
