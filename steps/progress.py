"""Training progress for people: a live bar on a terminal, a compact line now and then in logs (CI, Metaflow)."""
from __future__ import annotations

import os
import sys
import time
from typing import Callable


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def interactive_terminal() -> bool:
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


class EpochProgress:
    """Progress through one epoch's optimizer steps: loss, samples/s and time left.

    On a terminal a tqdm bar; otherwise (logs) one line at every `lines_per_epoch`-th of the epoch.
    """

    def __init__(self, epoch: int, epochs: int, steps: int, log: Callable[[str], None] = print,
                 interactive: bool | None = None, lines_per_epoch: int = 5):
        self.epoch, self.epochs, self.steps, self.log = epoch, epochs, steps, log
        self.done = self.samples = 0
        self.started = time.perf_counter()
        self.every = max(1, steps // max(1, lines_per_epoch))
        self.bar = None
        if interactive if interactive is not None else interactive_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True)

    def update(self, steps: int, samples: int, loss: float | None) -> None:
        self.done += steps
        self.samples += samples
        elapsed = time.perf_counter() - self.started
        rate = self.samples / elapsed if elapsed else 0.0
        eta = (self.steps - self.done) * elapsed / self.done if self.done else 0.0
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix_str(f"loss {loss:.4f}  {rate:.1f} samples/s" if loss is not None else
                                     f"{rate:.1f} samples/s", refresh=False)
        elif self.done // self.every > (self.done - steps) // self.every or self.done == self.steps:
            loss_text = f"loss {loss:.4f}  " if loss is not None else ""
            self.log(f"epoch {self.epoch}/{self.epochs} step {self.done}/{self.steps} "
                     f"({100 * self.done / self.steps:.0f}%)  {loss_text}{rate:.1f} samples/s  ETA {_duration(eta)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
