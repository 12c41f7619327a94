"""The training loop's small parts: timed batches, the logging window between two log lines, the profiler's
step timing, and what a validator handed to the trainer looks like."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch.profiler import record_function

from dali_pipelines.dataset import DatasetSpec
from relic_fast.distributed import World
from relic_fast.environment import synchronize
from relic_fast.loss import LOSS_TERMS


def timed_batches(loader: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """One pass over `loader` (the rest of the epoch, for a restored one): each batch with the seconds the loop
    waited for it, the fetch labelled "data" in profiler traces."""
    batches = iter(loader)
    while True:
        fetch_start = time.perf_counter()
        with record_function("data"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch, time.perf_counter() - fetch_start


class LoggingWindow:
    """The steps since the last log line: loss terms summed on the device (no host sync until `close`),
    data wait and wall time, so each log line reports means over its own window."""

    def __init__(self, device: torch.device):
        self.terms = torch.zeros(len(LOSS_TERMS), device=device)
        self._reset()

    def _reset(self) -> None:
        self.terms.zero_()
        self.steps, self.data_wait_s, self.start = 0, 0.0, time.perf_counter()
        self.lr = self.tau = math.nan

    def add(self, terms: torch.Tensor, data_wait_s: float, *, lr: float, tau: float) -> None:
        """Account one step: its loss terms (stacked in `LossTerms` order), data wait and schedule values."""
        self.terms += terms
        self.steps += 1
        self.data_wait_s += data_wait_s
        self.lr, self.tau = lr, tau

    def close(self) -> tuple[torch.Tensor, int, float, float, float, float]:
        """(mean terms, steps, elapsed s, data wait s, last lr, last tau) of the window; a new one starts."""
        result = (self.terms / max(self.steps, 1), self.steps, time.perf_counter() - self.start,
                  self.data_wait_s, self.lr, self.tau)
        self._reset()
        return result


class StepTiming:
    """The per-step hook of `Trainer.run_steps` (the profiler's): the device synchronized around each step, so
    that a step's device work is timed where it was queued; `record(data wait s, step s)` is called after each
    step. Normal runs have none: no extra host syncs."""

    def __init__(self, device: torch.device, record: Callable[[float, float], None]):
        self.device, self.record = device, record

    def sync(self) -> None:
        """Wait for the device (a host-device sync point, in profile mode only)."""
        synchronize(self.device)


class MonitorInterrupted(Exception):
    """A validator gave up its pass because a stop signal arrived (its `should_stop()` turned true)."""


class Validator(Protocol):
    """What the trainer runs at epoch ends (e.g. `relic_fast.evaluation.validate.KnnValidator`): it
    decides when, and returns metrics for `metrics.jsonl`. Every rank calls `validate` and gets the same
    metrics; it scores each of `heads` (name -> features to logits) too, gives up (raising) as soon as
    `should_stop()` is true, and calls `agree(failed_here)` once before its first collective (every rank goes
    on only if all got there)."""

    def should_validate(self, epochs_done: int) -> bool: ...

    def validate(self, encoder: torch.nn.Module, *, train_dataset: DatasetSpec, val_dataset: DatasetSpec,
                 world: World, heads: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 should_stop: Callable[[], bool] = ..., agree: Callable[[bool], bool] = ...) -> dict[str, float]: ...
