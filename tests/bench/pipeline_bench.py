"""End-to-end pipeline benchmark: the whole default ReviewFlow run, where its time goes, training vs the rest.

    python tests/bench/pipeline_bench.py --json                                  # the default flow, sample:amazon
    python tests/bench/pipeline_bench.py --json -- --max-rows 300 --epochs 1     # a quick check
    python tests/bench/pipeline_bench.py --repeat 3 --rerun --keep -- --epochs 1

Runs `python flows/review_flow.py run [flow args]` (everything after `--` goes to the flow) as a subprocess in a
fresh temporary folder: its own local Metaflow datastore (METAFLOW_DATASTORE_SYSROOT_LOCAL) and its own SQLite
MLflow store (`mlflow.db` there), as tests/flow_runs.py isolates the test runs. The wall time covers the whole
command (time.perf_counter around the subprocess). The finished run is then read with the Metaflow client (in a
child process with the same datastore and folder): each step's seconds (task created_at -> finished_at, so process
start and imports count to the step), the seconds inside the training epochs (the sum of the train step's
`history` epoch_seconds: the optimizer passes plus each epoch's validation loss; if the history has none, the
"epoch i/n: ... (x s)" lines of the run's log), the test metrics and the ingested rows.

Each run prints one JSON line: route ("train"), wall_s, training_s, overhead_s (= wall_s - training_s), steps
({step: seconds}), outside_steps_s (wall_s minus the steps' seconds: the launcher and code package, and after each
step's code what Metaflow does before the next process starts: the final card renders of the steps with a card, two
`card create` subprocesses each, and the process's exit),
train_pass_s (train_summary train_seconds: the optimizer passes only), accuracy and f1 (the evaluate step's
test_metrics), rows (ingested), cpu (lscpu model name), cpus, load_avg (1-minute load average when the run ended),
run (Metaflow pathspec) and repeat. A table goes to stderr.

`--rerun` runs the same command a second time in the same folder (the skip-if-unchanged route: the first run's
champion was trained on the same inputs, so validate goes straight to end) and prints a second JSON line with
"route": "unchanged" (the route the run took, read from its validate step; a warning on stderr if it trained
again, e.g. because the first model did not pass the gate and so is no champion). `--repeat N` does all that N
times, each in a new folder. `--keep` keeps the folders (their paths go to stderr, and into the JSON as
"workdir"); a failed run's folder is always kept, with the flow's output in flow-<n>.log. stdout has only the JSON
lines; the flow's own output goes to stderr as well unless --json.

Two views of the fixed cost (what stands between the default run and a small overhead):
`--imports` runs the flow with PYTHONPROFILEIMPORTTIME=1 (Python's -X importtime, inherited by every step process)
and adds "imports_s" (seconds of top-level imports per step process) and "imports_top" (the five costliest per
step) from the flow log; the instrumentation slows the run itself by a few percent, so take the other figures from
a run without it. `--floor` also runs, in the same folder, an empty flow with the same nine steps (each step only
calls self.next) and adds "empty_flow_s" to the training run's line: Metaflow's own cost of nine step processes
on this machine. Both together (`--imports --floor`) also replay each step's top-level imports, in its order, in a
fresh Python without the instrumentation (metaflow itself imported first, untimed: the empty flow pays for it), the
fastest of three: "import_floor_s" ({step: seconds}: what a process for that step pays before any of its work),
"fixed_cost_floor_s" (empty_flow_s plus their sum) and "fixed_cost_floor_share" (that floor's share of a run with
this run's training epochs). A step takes no less than its import floor unless it imports less.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
runpy.run_path(str(ROOT / "flows" / "flowkit" / "__init__.py"))  # puts the library on sys.path, as for the flows

FLOW_FILE = ROOT / "flows" / "review_flow.py"
FLOW_NAME = "ReviewFlow"
BENCH_USER = "reviewflow-bench"
# A top-level import in a step's log (nested ones have more spaces before the module and do not match: their
# time is inside their top-level parent's cumulative time)
IMPORT_LINE = re.compile(r"\[[^/\]]+/(\w+)/\d+[^\]]*\] import time:\s*\d+ \|\s*(\d+) \| (\S.*)$")
JSON_KEYS = ("route", "wall_s", "training_s", "overhead_s", "steps", "outside_steps_s", "train_pass_s", "accuracy",
             "f1", "rows", "cpu", "cpus", "load_avg", "run", "repeat")
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .*\((\d+(?:\.\d+)?) s\)")  # steps/training/loop.py end_epoch


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    flow_args = []
    if "--" in argv:
        at = argv.index("--")
        argv, flow_args = argv[:at], argv[at + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [options] [-- flow run options]")
    parser.add_argument("--repeat", type=int, default=1, help="run the flow this many times, each in a fresh folder")
    parser.add_argument("--rerun", action="store_true",
                        help="after each run, run the same command again in the same folder (skip-if-unchanged)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders and print their paths")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one flow command may take")
    parser.add_argument("--json", action="store_true",
                        help="JSON lines on stdout, only the tables on stderr (without: the flow's output too)")
    parser.add_argument("--imports", action="store_true",
                        help="profile each step process's imports (PYTHONPROFILEIMPORTTIME=1): imports_s, imports_top")
    parser.add_argument("--floor", action="store_true",
                        help="also time an empty flow with the same nine steps (empty_flow_s); with --imports, also "
                             "replay each step's imports in a fresh process (import_floor_s, fixed_cost_floor_s)")
    parser.add_argument("--read-run", nargs=2, metavar=("WORKDIR", "RUN_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.flow_args = flow_args
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def flow_env(workdir: Path) -> dict:
    """The environment of a flow run isolated in `workdir` (as tests/flow_runs.py flow_env, as another user)."""
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    return {**os.environ,
            "USERNAME": BENCH_USER, "METAFLOW_USER": BENCH_USER,
            "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(workdir),
            "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "TQDM_DISABLE": "1"}


# --- in a child process: read a finished run with the Metaflow client -----------------------------------------
def read_run(workdir: str, run_id: str) -> None:
    """Print one JSON object about run `run_id` of the datastore in `workdir` (env set by the parent)."""
    from metaflow import Run, metadata, namespace

    metadata(f"local@{workdir}")
    namespace(None)
    run = Run(f"{FLOW_NAME}/{run_id}")

    def artifact(task, name):
        try:
            return task[name].data
        except KeyError:
            return None

    steps, tasks = {}, {}
    for step in run.steps():
        task = step.task
        tasks[step.id] = task
        started, finished = task.created_at, task.finished_at
        steps[step.id] = {"started": started.timestamp() if started else None,
                          "seconds": (finished - started).total_seconds() if started and finished else None}
    result = {"pathspec": run.pathspec, "successful": run.successful,
              "steps": dict(sorted(steps.items(), key=lambda kv: kv[1]["started"] or 0.0))}
    if "ingest" in tasks:
        summary = artifact(tasks["ingest"], "ingest_summary") or {}
        result["rows"] = summary.get("rows")
    if "validate" in tasks:
        result["route"] = artifact(tasks["validate"], "route")
        result["retrain_reason"] = artifact(tasks["validate"], "retrain_reason")
    if "train" in tasks:
        result["train_summary"] = artifact(tasks["train"], "train_summary")
        result["epoch_seconds"] = [h.get("epoch_seconds") for h in artifact(tasks["train"], "history") or []]
    if "evaluate" in tasks:
        metrics = artifact(tasks["evaluate"], "test_metrics") or {}
        result["accuracy"], result["f1"] = metrics.get("accuracy"), metrics.get("f1")
    print(json.dumps(result, default=str), flush=True)


# --- in the parent --------------------------------------------------------------------------------------------
def copy_output(pipe, out, echo: bool) -> None:
    """The flow's output into its log file, and to stderr unless --json."""
    for line in pipe:
        out.write(line)
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()
    out.flush()


def run_flow(workdir: Path, flow_args: list[str], number: int, timeout: float,
             echo: bool, flow_file: Path = FLOW_FILE, extra_env: dict | None = None) -> tuple[int, float, str, Path]:
    """Run the flow once in `workdir`; returns (exit status, wall seconds, run id or "", log file)."""
    run_id_file = workdir / f"run-id-{number}"
    log_file = workdir / f"flow-{number}.log"
    command = [sys.executable, str(flow_file), "run", "--run-id-file", str(run_id_file), *flow_args]
    log(f"$ (cd {workdir} && python {' '.join(command[1:])})")
    with open(log_file, "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, env={**flow_env(workdir), **(extra_env or {})},
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace",
                                   start_new_session=True)  # its own group: a timeout ends the step processes too
        copier = threading.Thread(target=copy_output, args=(process.stdout, out, echo), daemon=True)
        copier.start()
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            status = 124
            log(f"the flow ran past --timeout {timeout:.0f} s and was stopped")
        wall = time.perf_counter() - started
        copier.join(timeout=30)
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
    return status, wall, run_id, log_file


def read_finished_run(workdir: Path, run_id: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--read-run", str(workdir), run_id], cwd=workdir,
                          env=flow_env(workdir), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"reading run {FLOW_NAME}/{run_id} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def epoch_seconds_from_log(log_file: Path) -> list[float]:
    """The "epoch i/n: ... (x s)" lines of the train step, last attempt's value per epoch (whole seconds)."""
    by_epoch = {}
    for line in log_file.read_text(errors="replace").splitlines():
        if "/train/" in line and (match := EPOCH_LINE.search(line)):
            by_epoch[int(match.group(1))] = float(match.group(2))
    return list(by_epoch.values())


def top_level_imports(log_file: Path) -> dict:
    """From a flow log written under PYTHONPROFILEIMPORTTIME=1: {step: [(microseconds, module), ...]}, each step's
    top-level imports in the order they were logged (a retried step's attempts, and anything else logged under the
    step's prefix, follow one another)."""
    found: dict = {}
    for line in log_file.read_text(errors="replace").splitlines():
        match = IMPORT_LINE.search(line)
        if match:
            found.setdefault(match.group(1), []).append((int(match.group(2)), match.group(3).strip()))
    return found


def import_seconds(log_file: Path, top: int = 5) -> tuple[dict, dict]:
    """From a flow log written under PYTHONPROFILEIMPORTTIME=1: ({step: seconds of its top-level imports},
    {step: [[module, seconds], ...] the `top` costliest}). A retried step's attempts add up."""
    modules = top_level_imports(log_file)
    seconds = {step: round(sum(micros for micros, _ in found) / 1e6, 2) for step, found in modules.items()}
    costliest = {step: [[module, round(micros / 1e6, 2)] for micros, module in sorted(found, reverse=True)[:top]]
                 for step, found in modules.items()}
    return seconds, costliest


def step_modules(log_file: Path) -> dict:
    """From a flow log written under PYTHONPROFILEIMPORTTIME=1: {step: its top-level imports, in first-import order,
    each once} (a retried step's attempts and anything else logged under the step's prefix merge)."""
    return {step: list(dict.fromkeys(module for _, module in found))
            for step, found in top_level_imports(log_file).items()}


# Run in a fresh Python with a step process's sys.path: import metaflow first, untimed (the empty flow's processes
# pay for it too), then the step's top-level modules in its order, each timed; prints {"seconds", "failed"}.
REPLAY = """import importlib, json, sys, time
sys.path[:0] = [{flows!r}, {root!r}]
import metaflow, metaflow.cli
seconds, failed = 0.0, []
for name in {modules!r}:
    began = time.perf_counter()
    try:
        importlib.import_module(name)
    except BaseException:
        failed.append(name)
    seconds += time.perf_counter() - began
print(json.dumps({{"seconds": seconds, "failed": failed}}))
"""


def import_floor(workdir: Path, modules: dict, repeats: int = 3) -> tuple[dict, dict]:
    """({step: seconds}, {step: modules that failed to import alone}): each step's own top-level imports (from an
    --imports run's log) replayed in a fresh Python without the instrumentation, the fastest of `repeats`: what a
    process for that step pays before it can do any work, on this machine."""
    env = {k: v for k, v in flow_env(workdir).items() if k != "PYTHONPROFILEIMPORTTIME"}
    seconds, failed = {}, {}
    for step, names in modules.items():
        program = REPLAY.format(flows=str(FLOW_FILE.parent), root=str(ROOT), modules=names)
        for _ in range(repeats):
            out = subprocess.run([sys.executable, "-c", program], cwd=workdir, env=env, capture_output=True,
                                 text=True, timeout=300)
            if out.returncode != 0:
                log(f"replaying the {step} step's imports failed: {out.stderr.strip()[-500:]}")
                seconds.pop(step, None)
                failed[step] = ["(the replay itself failed)"]
                break
            result = json.loads(out.stdout.strip().splitlines()[-1])
            seconds[step] = round(min(seconds.get(step, float("inf")), result["seconds"]), 2)
            if result["failed"]:
                failed[step] = result["failed"]
    return seconds, failed


EMPTY_FLOW = """from metaflow import FlowSpec, step


class EmptyFlow(FlowSpec):
{steps}

if __name__ == "__main__":
    EmptyFlow()
"""


def empty_flow_seconds(workdir: Path, args, step_names: list[str]) -> float | None:
    """Wall seconds of a linear flow with the steps `step_names` (the measured run's, in order) that do nothing,
    in the same environment and datastore."""
    steps = []
    for name, following in zip(step_names, [*step_names[1:], None]):
        body = f"self.next(self.{following})" if following else "pass"
        steps.append(f"    @step\n    def {name}(self):\n        {body}\n")
    flow_file = workdir / "empty_flow.py"
    flow_file.write_text(EMPTY_FLOW.format(steps="\n".join(steps)))
    status, wall, _, log_file = run_flow(workdir, [], 0, args.timeout, not args.json, flow_file=flow_file)
    if status != 0:
        log(f"the empty flow failed (exit {status}); its output: {log_file}")
        return None
    return round(wall, 2)


def measure(workdir: Path, flow_args: list[str], number: int, args, expected_route: str) -> dict | None:
    extra_env = {"PYTHONPROFILEIMPORTTIME": "1"} if args.imports else None
    status, wall, run_id, log_file = run_flow(workdir, flow_args, number, args.timeout, not args.json,
                                              extra_env=extra_env)
    load_avg = round(os.getloadavg()[0], 2)
    if status != 0 or not run_id:
        tail = log_file.read_text(errors="replace").splitlines()[-40:]
        log("\n".join(tail))
        log(f"the flow failed (exit {status}) after {wall:.1f} s; its output: {log_file}")
        return None
    info = read_finished_run(workdir, run_id)
    steps = {name: round(s["seconds"], 2) for name, s in info["steps"].items() if s["seconds"] is not None}
    epochs = [s for s in info.get("epoch_seconds") or [] if s is not None]
    if "train" in steps and not epochs:
        epochs = epoch_seconds_from_log(log_file)
        log(f"no epoch_seconds in the train step's history: from the log, {epochs}")
    training = round(sum(epochs), 2)
    route = info.get("route") or "?"
    if route != expected_route:
        log(f"WARNING: run {info['pathspec']} took route {route!r}, not {expected_route!r}: "
            f"{info.get('retrain_reason')}")
    summary = info.get("train_summary") or {}
    line = {"route": route, "wall_s": round(wall, 2), "training_s": training, "overhead_s": round(wall - training, 2),
            "steps": steps, "outside_steps_s": round(wall - sum(steps.values()), 2),
            "train_pass_s": summary.get("train_seconds"), "accuracy": info.get("accuracy"), "f1": info.get("f1"),
            "rows": info.get("rows"), "cpu": args.cpu, "cpus": os.cpu_count(), "load_avg": load_avg,
            "run": info["pathspec"], "repeat": args.round}
    line = {k: line[k] for k in JSON_KEYS}
    if args.imports:
        line["imports_s"], line["imports_top"] = import_seconds(log_file)
    if args.floor and expected_route == "train":  # once per folder, beside the full run
        line["empty_flow_s"] = empty_flow_seconds(workdir, args, list(steps))  # the run's steps, in start order
        if args.imports:
            line["import_floor_s"], failed = import_floor(workdir, step_modules(log_file))
            if failed:
                line["import_floor_failed"] = failed
            if line["empty_flow_s"] is not None and set(line["import_floor_s"]) == set(line["steps"]):
                floor = round(line["empty_flow_s"] + sum(line["import_floor_s"].values()), 2)
                line["fixed_cost_floor_s"] = floor
                line["fixed_cost_floor_share"] = round(floor / (floor + training), 3) if floor + training else None
    if args.keep:
        line["workdir"] = str(workdir)
    return line


def print_table(line: dict) -> None:
    wall = line["wall_s"]

    def share(seconds):
        return f"{100 * seconds / wall:5.1f}%" if wall else ""

    rows = [(f"step {name}", seconds) for name, seconds in line["steps"].items()]
    rows.append(("outside steps (launcher, cards, exits)", line["outside_steps_s"]))
    if line["training_s"]:
        rows.append(("inside training epochs", line["training_s"]))
        rows.append(("everything but training epochs", line["overhead_s"]))
    log(f"{line['run']} (route {line['route']}, repeat {line['repeat']}): wall {wall:.1f} s, {line['rows']} rows, "
        f"accuracy {line['accuracy']}, f1 {line['f1']}; {line['cpu']}, {line['cpus']} CPUs, load {line['load_avg']}")
    width = max(len(name) for name, _ in rows)
    imports = line.get("imports_s") or {}
    for name, seconds in rows:
        step = name[len("step "):] if name.startswith("step ") else None
        extra = f"  imports {imports[step]:6.2f} s" if step in imports else ""
        log(f"  {name:<{width}}  {seconds:8.2f} s  {share(seconds)}{extra}")
    if imports:
        log(f"  imports in all step processes: {sum(imports.values()):.2f} s")
    if line.get("empty_flow_s") is not None:
        log(f"  an empty flow with the same nine steps: {line['empty_flow_s']:.2f} s")
    floors = line.get("import_floor_s") or {}
    if floors:
        log("  each step's imports alone, in a fresh process (the fastest of 3): "
            + ", ".join(f"{step} {seconds:.2f}" for step, seconds in floors.items())
            + f"; {sum(floors.values()):.2f} s in all")
    if line.get("fixed_cost_floor_s") is not None:
        log(f"  floor of everything but training epochs (empty flow + those imports): "
            f"{line['fixed_cost_floor_s']:.2f} s = {100 * line['fixed_cost_floor_share']:.1f}% of a run with these "
            f"epochs")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.read_run:
        read_run(*args.read_run)
        return 0
    args.cpu = cpu_model()
    lines = []
    for round_number in range(1, args.repeat + 1):
        args.round = round_number
        workdir = Path(tempfile.mkdtemp(prefix="reviewflow-bench-")).resolve()
        keep = args.keep
        try:
            for number, route in enumerate(("train", "unchanged")[:2 if args.rerun else 1], start=1):
                line = measure(workdir, args.flow_args, number, args, route)
                if line is None:
                    keep = True
                    return 1
                print_table(line)
                print(json.dumps(line), flush=True)
                lines.append(line)
        finally:
            if keep:
                log(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    if args.repeat > 1:
        for route in ("train", "unchanged"):
            walls = sorted(line["wall_s"] for line in lines if line["route"] == route)
            if walls:
                log(f"route {route}: wall min {walls[0]:.1f} s, median {walls[len(walls) // 2]:.1f} s, "
                    f"max {walls[-1]:.1f} s over {len(walls)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
