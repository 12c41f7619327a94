"""The training loop's small parts: timed batches, the logging window between two log lines, the profiler's
step timing, the warm-up report, and what a validator handed to the trainer looks like and how every rank runs
it together."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch
from torch.profiler import record_function

from dali_pipelines.dataset import DatasetSpec
from relic_fast.distributed import World
from relic_fast.environment import compiled_graph_count, process_age_s, synchronize
from relic_fast.errors import MonitorError
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


def run_validator(validator: Validator, encoder: torch.nn.Module, *, train_dataset: DatasetSpec,
                  val_dataset: DatasetSpec, world: World, heads: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                  control: Any, checkpoint: Callable[[], Any], epochs_done: int) -> tuple[dict[str, float], str | None]:
    """One pass of `validator` after epoch `epochs_done`, every rank taking part: (its metrics, the stop signal
    any rank received meanwhile). Each rank agrees once with the others (`control`, the run's `RunControl`)
    before the validator's first collective, or after it gave up (a stop signal, a failure) before getting
    there, so no rank is left waiting inside a collective another never enters. A failure on any rank: every
    rank calls `checkpoint()` (the path rank 0 saved, else None), then raises `MonitorError`, so no work is lost."""
    agreed: dict[str, Any] = {}

    def agree(failed_here: bool) -> bool:
        """Every rank, once, before the validator's first collective: go on only if no rank stopped or failed."""
        agreed["stop"], agreed["failed"] = control.agree_between_steps(failed=failed_here)
        return agreed["stop"] is None and not agreed["failed"]

    metrics, error = {}, None
    try:
        metrics = validator.validate(encoder, train_dataset=train_dataset, val_dataset=val_dataset, world=world,
                                     heads=heads, should_stop=control.stop_received, agree=agree)
    except MonitorInterrupted:
        pass
    except Exception as err:  # noqa: BLE001 - any failure of the monitor: checkpoint first, then stop
        error = err
    if not agreed:  # the validator gave up before its agreement point
        agree(error is not None)
    if agreed["failed"]:
        saved = checkpoint()
        where = f"saved {saved}; `--resume` continues" if saved else "checkpoint saved by rank 0"
        cause = f"{type(error).__name__}: {error}" if error is not None else "on another rank"
        raise MonitorError(f"the monitor failed after epoch {epochs_done} ({cause}); {where} "
                           f"(train.knn_every_epochs = 0 turns the monitor off)") from error
    return metrics, agreed["stop"]


class WarmupReport:
    """How long this process took to its first step: `first_step_s` (process start to the end of that step: the
    compile warm-up a user waits for) and `compiled_graphs`, recorded once; `recompiles` counts graphs compiled
    after it."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        """Empty until the first step is recorded."""

    def record(self, device: torch.device) -> str:
        """Record the first step (a one-time host sync, so the time includes the step's device work); returns
        the line the display shows."""
        synchronize(device)
        self.values = {"first_step_s": process_age_s(), "compiled_graphs": compiled_graph_count()}
        return (f"first step done {self.values['first_step_s']:.1f} s after process start "
                f"({self.values['compiled_graphs']} compiled graph(s))")

    def recompiles(self) -> int:
        """Graphs compiled after this process's first step: 0 when every step reuses the first compilation."""
        if not self.values:
            return 0
        return compiled_graph_count() - int(self.values["compiled_graphs"])

    def metrics(self) -> dict[str, float]:
        """The report as metrics (none before the first step, but `recompiles`)."""
        return {**self.values, "recompiles": self.recompiles()}
