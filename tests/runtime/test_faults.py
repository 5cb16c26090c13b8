"""The test-only fault hook: REVIEWFLOW_FAIL_AT names points; unset, it does nothing."""
import subprocess
import sys

import pytest

from steps.runtime import faults
from tests.flow_runs import ROOT


@pytest.fixture(autouse=True)
def first_attempt():
    faults.enter_step("a-step-that-is-no-fault-point", attempt=0)
    yield
    faults.enter_step("a-step-that-is-no-fault-point", attempt=0)


def test_unset_or_other_points_do_nothing(monkeypatch):
    monkeypatch.delenv(faults.FAIL_AT, raising=False)
    faults.inject("register/after_version")
    monkeypatch.setenv(faults.FAIL_AT, "train/after_epoch_2")
    faults.inject("train/after_epoch_1")
    faults.enter_step("train", attempt=0)


def test_a_named_point_fails_on_every_attempt(monkeypatch):
    monkeypatch.setenv(faults.FAIL_AT, "validate, register/after_version")
    for attempt in (0, 1):
        with pytest.raises(faults.InjectedFault, match="validate"):
            faults.enter_step("validate", attempt)
        with pytest.raises(faults.InjectedFault, match=rf"register/after_version \(attempt {attempt}\)"):
            faults.inject("register/after_version")


def test_first_only_lets_the_retry_through(monkeypatch):
    monkeypatch.setenv(faults.FAIL_AT, "register@first")
    with pytest.raises(faults.InjectedFault):
        faults.enter_step("register", attempt=0)
    faults.enter_step("register", attempt=1)


def test_a_bad_mode_is_refused(monkeypatch):
    monkeypatch.setenv(faults.FAIL_AT, "train=explode")
    with pytest.raises(ValueError, match="unknown mode 'explode'"):
        faults.inject("train")


def test_kill_mode_sigkills_the_process():
    code = "from steps.runtime import faults; faults.inject('train/after_epoch_1'); print('survived')"
    env = {"PYTHONPATH": str(ROOT), faults.FAIL_AT: "train/after_epoch_1=kill"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -9 and "survived" not in done.stdout
    assert "injected fault at train/after_epoch_1 (kill, attempt 0)" in done.stdout
