"""Progress for people, in one of three modes, for every long piece of work (fetch, tokenize, train, predict).

- bar: a live tqdm bar, where this process itself has a terminal (a shell, a notebook calling steps/ functions).
- lines: a compact line every ~10 s, e.g. `tokenize 45% 1.6k/3.6k reviews 2.1k reviews/s ETA 3s`. This is
  what the steps of a flow started from a terminal print: a step's stdout is a pipe whose complete lines
  Metaflow prefixes and shows, so a redrawn bar would not render there.
- quiet: only a finish line (and the callers' own start lines). CI, cron and `metaflow.Runner` logs stay short.

The mode comes from REVIEWFLOW_PROGRESS (bar | lines | quiet) when set; flows/flowkit/launch.py sets it to `lines` in
the process that launches a flow from a terminal, and the step processes inherit it. Otherwise: bar on a
terminal, quiet elsewhere. REVIEWFLOW_PROGRESS_SECONDS changes the ~10 s between lines.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

MODE_VARIABLE = "REVIEWFLOW_PROGRESS"
INTERVAL_VARIABLE = "REVIEWFLOW_PROGRESS_SECONDS"
MODES = ("bar", "lines", "quiet")
DEFAULT_INTERVAL = 10.0


def duration(seconds: float) -> str:
    """3s, 1m48s, 2h05m: short enough for a progress line."""
    seconds = int(round(max(0.0, seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def count(n: float) -> str:
    """812, 1.6k, 24k, 1.2M: counts as a person glances at them."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            value = n / limit
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{n:.1f}" if n != int(n) and abs(n) < 10 else f"{n:.0f}"


def has_terminal() -> bool:
    """Whether this process can draw a bar: stderr is a terminal, or it runs in a Jupyter kernel."""
    try:
        return sys.stderr.isatty() or "ipykernel" in sys.modules
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return False


def progress_mode() -> str:
    """bar, lines or quiet for this process (see the module's docstring)."""
    bar_possible = has_terminal() and not os.environ.get("TQDM_DISABLE")
    forced = os.environ.get(MODE_VARIABLE, "").strip().lower()
    if forced == "bar":
        return "bar" if bar_possible else "lines"
    if forced in ("lines", "quiet"):
        return forced
    if bar_possible:
        return "bar"
    return "lines" if has_terminal() else "quiet"


def progress_interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_VARIABLE, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def mark_launch_from_terminal() -> None:
    """In the process that launches a flow: if it has a terminal, ask the step processes for progress lines."""
    try:
        interactive = sys.stdout.isatty() or sys.stderr.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if interactive and not os.environ.get(MODE_VARIABLE):
        os.environ[MODE_VARIABLE] = "lines"


def _log(message: str) -> None:
    print(message, flush=True)


class Progress:
    """Progress through `total` units of work (None: size unknown, then elapsed time only).

        with Progress("tokenize", total=len(texts), unit="reviews") as progress:
            for chunk in chunks:
                ...
                progress.update(len(chunk))

    update(n, rated=, note=): `rated` counts what the speed is given in (`rate_unit`, default the unit itself),
    e.g. steps done but samples/s; `note` is shown as is (`loss 0.5234`). The finish line (all modes but bar
    with finish_line=False) says how much, how long and how fast.
    """

    def __init__(self, task: str, total: int | None = None, unit: str = "items", *, rate_unit: str | None = None,
                 log: Callable[[str], None] = _log, mode: str | None = None, interval: float | None = None,
                 finish_line: bool = True, clock: Callable[[], float] = time.monotonic):
        self.task, self.total, self.unit = task, total, unit
        self.rate_unit = rate_unit or unit
        self.log, self.finish_line, self.clock = log, finish_line, clock
        self.mode = mode or progress_mode()
        if self.mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {self.mode!r}")
        self.interval = progress_interval() if interval is None else interval
        self.done = self.rated = 0
        self.note = ""
        self.started = self.last_line = clock()
        self.closed = False
        self.bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=task, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr,
                             disable=False)  # decided above; tqdm would read TQDM_DISABLE only at its import

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)

    def rate(self) -> float:
        elapsed = self.clock() - self.started
        return self.rated / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """`task 45% 1.6k/3.6k reviews 2.1k reviews/s ETA 3s  note` (known total) or `task 1.6k reviews ... 12s`."""
        elapsed = self.clock() - self.started
        parts = [self.task]
        if self.total:
            parts.append(f"{100 * self.done / self.total:.0f}% {count(self.done)}/{count(self.total)} {self.unit}")
        elif self.done:
            parts.append(f"{count(self.done)} {self.unit}")
        if self.note:
            parts.append(self.note)
        if self.rated:
            parts.append(f"{count(self.rate())} {self.rate_unit}/s")
        if self.total and self.done:
            parts.append(f"ETA {duration((self.total - self.done) * elapsed / self.done)}")
        else:
            parts.append(f"{duration(elapsed)} elapsed")
        return "  ".join(parts)

    def update(self, n: int = 1, *, rated: int | None = None, note: str | None = None) -> None:
        self.done += n
        self.rated += n if rated is None else rated
        if note is not None:
            self.note = note
        if self.bar is not None:
            self.bar.update(n)
            postfix = "  ".join(p for p in (self.note, f"{count(self.rate())} {self.rate_unit}/s"
                                            if self.rate_unit != self.unit else "") if p)
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
        elif self.mode == "lines":
            now = self.clock()
            finished = bool(self.total) and self.done >= self.total
            if now - self.last_line >= self.interval or (finished and not self.finish_line):
                self.last_line = now
                self.log(self.line())

    def tick(self) -> None:
        """For work of unknown size: a line now if the interval has passed (call it while waiting)."""
        if self.bar is not None:
            self.bar.refresh()
        elif self.mode == "lines" and self.clock() - self.last_line >= self.interval:
            self.last_line = self.clock()
            self.log(self.line())

    def summary(self) -> str:
        elapsed = self.clock() - self.started
        what = f"{self.done:,} {self.unit} in " if self.done else ""
        speed = f" ({count(self.rate())} {self.rate_unit}/s)" if self.rated and elapsed > 0 else ""
        return f"{self.task}: {what}{duration(elapsed) if elapsed >= 1 else f'{elapsed:.1f}s'}{speed}"

    def close(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        if self.finish_line and not failed:
            self.log(self.summary())
