"""Progress for people: which mode where, what the lines say and how often, and the bounded per-step history."""
import io
import sys

import pytest

from steps.runtime.progress import Progress, count, duration, mark_launch_from_terminal, progress_mode
from steps.training.history import StepHistory


class Clock:
    """A clock the test moves by hand, so "a line every 10 s" is checked without waiting."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def progress(clock, mode="lines", **kwargs):
    lines = []
    return Progress(kwargs.pop("task", "tokenize"), kwargs.pop("total", 3600), kwargs.pop("unit", "reviews"),
                    log=lines.append, mode=mode, interval=10, clock=clock, **kwargs), lines


def test_lines_mode_prints_one_compact_line_per_interval_then_a_finish_line():
    clock = Clock()
    p, lines = progress(clock)
    clock.now += 4
    p.update(1600)  # 4 s in: not yet
    assert lines == []
    clock.now += 7
    p.update(100)  # 11 s in: a line
    assert lines == ["tokenize  47% 1.7k/3.6k reviews  155 reviews/s  ETA 12s"]
    clock.now += 3
    p.update(1900)  # done, 14 s in, 3 s after the last line: the finish line says it
    p.close()
    assert lines[1:] == ["tokenize: 3,600 reviews in 14s (257 reviews/s)"]


def test_quiet_mode_prints_only_the_finish_line_and_nothing_after_a_failure():
    clock = Clock()
    p, lines = progress(clock, mode="quiet")
    for _ in range(36):
        clock.now += 5
        p.update(100)
    p.close()
    assert lines == ["tokenize: 3,600 reviews in 3m00s (20 reviews/s)"]
    failed, failed_lines = progress(clock, mode="quiet")
    with pytest.raises(RuntimeError), failed:
        failed.update(10)
        raise RuntimeError("tokenizer broke")
    assert failed_lines == []


def test_training_lines_count_steps_but_give_the_speed_in_samples_and_the_loss():
    clock = Clock()
    p, lines = progress(clock, task="train epoch 1/2", total=158, unit="steps", rate_unit="samples",
                        finish_line=False)
    clock.now += 30
    p.update(64, rated=1024, note="loss 0.5234")
    clock.now += 36
    p.update(94, rated=1504, note="loss 0.4410")  # the last step: a line, as there is no finish line
    p.close()
    assert lines == ["train epoch 1/2  41% 64/158 steps  loss 0.5234  34 samples/s  ETA 44s",
                     "train epoch 1/2  100% 158/158 steps  loss 0.4410  38 samples/s  ETA 0s"]


def test_work_of_unknown_size_reports_elapsed_time():
    clock = Clock()
    p, lines = progress(clock, task="fetch sample:amazon", total=None, unit="")
    clock.now += 12
    p.tick()
    clock.now += 2
    p.tick()  # within the interval: nothing
    p.close()
    assert lines == ["fetch sample:amazon  12s elapsed", "fetch sample:amazon: 14s"]


def test_bar_mode_draws_a_tqdm_bar_and_still_logs_the_finish_line(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # tests/conftest.py switches tqdm off elsewhere
    clock = Clock()
    p, lines = progress(clock, mode="bar")
    clock.now += 2
    p.update(3600)
    p.close()
    assert "tokenize:" in screen.getvalue() and "/3600" in screen.getvalue()  # drawn (and cleared at the end)
    assert lines == ["tokenize: 3,600 reviews in 2s (1.8k reviews/s)"]


@pytest.mark.parametrize("variable, terminal, tqdm_disable, expected", [
    ("", False, "", "quiet"),  # CI, cron, metaflow.Runner, a step of a flow launched without a terminal
    ("", True, "", "bar"),  # a shell or notebook calling steps/ functions
    ("", True, "1", "lines"),  # bars switched off on a terminal
    ("lines", False, "", "lines"),  # a step of a flow launched from a terminal (inherited from the launcher)
    ("bar", False, "", "lines"),  # a bar cannot be drawn into a pipe
    ("quiet", True, "", "quiet"),
])
def test_the_mode_depends_on_the_terminal_and_the_launcher(monkeypatch, variable, terminal, tqdm_disable, expected):
    monkeypatch.setattr(sys, "stderr", Terminal() if terminal else io.StringIO())
    monkeypatch.setenv("REVIEWFLOW_PROGRESS", variable)
    monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    assert progress_mode() == expected


def test_a_launch_from_a_terminal_asks_the_steps_for_lines(monkeypatch):
    monkeypatch.delenv("REVIEWFLOW_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    mark_launch_from_terminal()
    assert "REVIEWFLOW_PROGRESS" not in __import__("os").environ  # CI: nothing set, the steps stay quiet
    monkeypatch.setattr(sys, "stderr", Terminal())
    mark_launch_from_terminal()
    assert __import__("os").environ["REVIEWFLOW_PROGRESS"] == "lines"
    monkeypatch.setenv("REVIEWFLOW_PROGRESS", "quiet")
    mark_launch_from_terminal()  # a user's explicit choice wins
    assert __import__("os").environ["REVIEWFLOW_PROGRESS"] == "quiet"


def test_counts_and_durations_read_at_a_glance():
    assert [count(n) for n in (7, 812, 1600, 24_000, 1_250_000)] == ["7", "812", "1.6k", "24k", "1.2M"]
    assert [duration(s) for s in (3, 108, 7500)] == ["3s", "1m48s", "2h05m"]


def test_step_history_keeps_every_step_of_a_short_run():
    history = StepHistory(max_points=100)
    for step in range(1, 51):
        history.add(step, loss=1.0 / step, learning_rate=step * 1e-6, micro_batch_size=16)
    out = history.as_dict()
    assert out["step"] == list(range(1, 51)) and out["stride"] == 1
    assert out["loss"][9] == pytest.approx(0.1) and out["learning_rate"][-1] == pytest.approx(50e-6)


def test_step_history_of_a_long_run_stays_bounded_and_keeps_the_shape():
    history = StepHistory(max_points=100)
    steps = 10_000
    for step in range(1, steps + 1):
        history.add(step, loss=2.0 - step / steps, learning_rate=1e-3 * (1 - step / steps),
                    micro_batch_size=16 if step < 5000 else 8)
    out = history.as_dict()
    assert 50 <= len(out["step"]) <= 101 and out["stride"] >= 100
    assert out["step"] == sorted(out["step"]) and out["step"][-1] == steps
    assert sum(out["loss"]) / len(out["loss"]) == pytest.approx(1.5, abs=0.02)  # means of equal-sized buckets
    assert out["loss"][0] > 1.9 and out["loss"][-1] < 1.1  # the curve's shape survives
    assert out["micro_batch_size"][0] == 16 and out["micro_batch_size"][-1] == 8
    restored = StepHistory.from_state(history.state())  # what a checkpoint keeps
    restored.add(steps + 1, 1.0, 0.0, 8)
    history.add(steps + 1, 1.0, 0.0, 8)
    assert restored.as_dict() == history.as_dict()
