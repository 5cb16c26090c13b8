"""The pipeline benchmark's import floor: which modules a step imported, read off an -X importtime flow log, and
their replay in a fresh Python (tests/bench/pipeline_bench.py --imports --floor)."""
import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench" / "pipeline_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("pipeline_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
2026-12-06 17:42:46.710 [1796/train/6 (pid 735)] Task is starting.
2026-12-06 17:42:46.800 [1796/train/6 (pid 735)] import time:       120 |        900 |   json.decoder
2026-12-06 17:42:46.801 [1796/train/6 (pid 735)] import time:       300 |       1500 | json
2026-12-06 17:42:46.802 [1796/train/6 (pid 735)] import time:        80 |         80 | colorsys
2026-12-06 17:42:47.100 [1796/evaluate/7 (pid 768)] import time:        90 |         90 | colorsys
2026-12-06 17:42:47.200 [1796/train/6 (pid 736)] import time:       100 |       1400 | json
2026-12-06 17:42:47.300 [1796/train/6 (pid 736)] epoch 1/2: train_loss 0.5060 (23 s)
"""


def test_a_steps_top_level_imports_are_read_in_order_once_each_and_nested_ones_are_left_to_their_parent(
        bench, tmp_path):
    log_file = tmp_path / "flow-1.log"
    log_file.write_text(LOG)

    modules = bench.step_modules(log_file)

    assert modules == {"train": ["json", "colorsys"], "evaluate": ["colorsys"]}  # a retry's imports merge


def test_replayed_imports_are_timed_in_a_fresh_process_and_a_module_that_cannot_be_imported_alone_is_named(
        bench, tmp_path):
    seconds, failed = bench.import_floor(tmp_path, {"evaluate": ["json", "no_such_module_for_the_floor"],
                                                    "end": ["colorsys"]}, repeats=2)

    assert set(seconds) == {"evaluate", "end"} and all(value >= 0 for value in seconds.values())
    assert failed == {"evaluate": ["no_such_module_for_the_floor"]}


def test_the_replay_imports_the_projects_own_modules_as_a_step_process_does(bench, tmp_path):
    # flowkit lives in flows/ and steps/ at the repository root: a step process finds both
    seconds, failed = bench.import_floor(tmp_path, {"evaluate": ["flowkit", "steps.runtime.errors"]}, repeats=1)

    assert failed == {} and seconds["evaluate"] >= 0  # rounded to 10 ms: these are light
