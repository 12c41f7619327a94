"""A progress line for the experiment's own training loops (the peers and the supervised reference).

The trainer logs pretraining as it goes; these rows have loops of their own, and a row that prints nothing
for ten minutes looks hung. `StepProgress` prints about `lines` lines over a run: the step, the mean loss
since the last line and images/s. The loss is summed on the device and read only at a printed line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class StepProgress:
    """Call `step(loss)` after every optimizer step; every `total // lines` steps (and at the last) one line
    `"<label>: step s/total | loss x | y img/s"` goes to `log`."""

    def __init__(self, label: str, total: int, *, batch_size: int, log: Callable[[str], None] = print,
                 lines: int = 20):
        self.label, self.total, self.batch_size, self.log = label, total, batch_size, log
        self.every = max(1, total // max(1, lines))
        self.done = 0
        self.loss_sum: torch.Tensor | None = None
        self.window_steps = 0
        self.window_start = time.perf_counter()

    def step(self, loss: torch.Tensor) -> None:
        """Count one step and add its loss (kept on the device until a line is printed)."""
        loss = loss.detach()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.done += 1
        self.window_steps += 1
        if self.done % self.every == 0 or self.done == self.total:
            self.print_line()

    def print_line(self) -> None:
        """One line for the steps since the last; resets the window."""
        mean_loss = self.loss_sum.item() / self.window_steps  # note: a host sync, once per printed line
        seconds = time.perf_counter() - self.window_start
        rate = self.window_steps * self.batch_size / seconds if seconds > 0 else float("nan")
        self.log(f"{self.label}: step {self.done}/{self.total} | loss {mean_loss:.4f} | {rate:.1f} img/s")
        self.loss_sum, self.window_steps, self.window_start = None, 0, time.perf_counter()
