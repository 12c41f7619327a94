"""Stopping and checkpointing off the step schedule: signals and wall-clock checkpoints, decided at a
step boundary that every rank agrees on.

SIGTERM (what SLURM, Kubernetes and spot instances send before they stop a job), SIGINT (Ctrl-C) and
SIGUSR1 (SLURM's `--signal` pre-timeout warning) ask the run to finish its step, write a checkpoint
and exit with `ExitCode.STOPPED`; a second SIGINT raises KeyboardInterrupt at once. The trainer asks
`RunControl.after_step` after every optimizer step and gets a `Decision`.

Leaving the loop, the ranks wait for each other, so that none exits before rank 0 has written the
last checkpoint: torchrun answers a rank's non-zero exit by sending SIGTERM to the others. For the
same reason, once a stop is decided the handlers stay installed until the process exits (a further
SIGTERM is redundant; a further SIGINT still stops at once).

The handlers themselves (`stop_signals.StopSignals`) are installed when `pretrain` starts, long before the
first step, and handed to `RunControl`: a signal that lands while the trainer is still being built
(dataset validation, restore, the pipeline's start) is recorded too, and the trainer acts on it at the next
boundary of its start-up (exit 75, nothing written).

Under torchrun a signal may reach one rank, or every rank at different steps, and `train.checkpoint_minutes`
is measured by rank 0's clock, yet every rank must checkpoint and stop at the same step (checkpointing
is collective). The ranks agree through one 2-element all-reduce (max) per step on a separate gloo
group, started without waiting after step s and read after step s+1. That costs no host-device sync
(a CPU tensor, and the device collectives of the default group never wait for it) and normally no
wait at all (the reduction finished during step s+1); the price is one extra step before a stop.
Piggybacking the flag on the metric reduction of `train.log_every` would cost nothing extra but could
stop `log_every` steps late (20 steps of the ImageNet recipes), past torchrun's and SLURM's 30 s grace.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch

from relic_fast.distributed import all_reduce_max_async, wait_for_all
from relic_fast.stop_signals import STOP_SIGNALS, StopSignals, torchrun_signal_warning

__all__ = ["Decision", "RunControl", "STOP_SIGNALS", "StopSignals", "torchrun_signal_warning"]

@dataclass(frozen=True)
class Decision:
    """What to do after this step: checkpoint (step interval or wall clock), and stop (the signal's name)."""

    checkpoint: bool = False
    stop: str | None = None


class RunControl:
    """Signal handlers plus the checkpoint schedule, as a context manager around the step loop."""

    def __init__(self, *, checkpoint_every: int, checkpoint_minutes: float, is_main: bool, group=None,
                 clock: Callable[[], float] = time.monotonic, signals: StopSignals | None = None):
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = 60.0 * checkpoint_minutes
        self.is_main = is_main
        self.group = group
        """`distributed.control_group()`: the ranks agree through it; None decides locally, at once."""
        self.clock = clock
        self.signals = signals or StopSignals()
        """The stop handlers: shared with whoever installed them earlier (`pretrain`), else this run's own,
        installed by `with` and removed after it."""
        self._owns_signals = signals is None
        self._on_signal = self.signals.on_signal
        self._last_checkpoint = clock()
        self._pending: tuple[object, torch.Tensor] | None = None

    @property
    def received(self) -> int | None:
        """The first stop signal this process received (a number), until the run acts on it."""
        return self.signals.received

    @property
    def stopping(self) -> bool:
        """A stop was decided: the process is on its way out (its stop handlers stay installed)."""
        return self.signals.stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        self.signals.stopping = value

    # ---------------------------------------------------------------- signals
    def __enter__(self) -> "RunControl":
        self._last_checkpoint = self.clock()
        if self._owns_signals:
            self.signals.__enter__()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self._owns_signals:
            self.signals.__exit__(exc_type, *exc)
        if self.group is not None and exc_type is None:
            if self._pending is not None:
                self._pending[0].wait()  # every rank started the same reductions; finish them before the group goes
            wait_for_all(self.group)  # rank 0 has written the last checkpoint when this returns
        self._pending = None

    # ---------------------------------------------------------------- decisions
    def after_step(self, step: int) -> Decision:
        """The decision for the boundary after optimizer step `step` (the same on every rank)."""
        on_schedule = step % self.checkpoint_every == 0
        if self.group is None:
            decision = Decision(checkpoint=on_schedule or self._clock_due(),
                                stop=signal.Signals(self.received).name if self.received else None)
        else:
            decision = self._agreed(on_schedule)
        if decision.checkpoint or decision.stop:
            self._last_checkpoint = self.clock()  # reset before the next flags leave, so a save counts once
        self.stopping = self.stopping or decision.stop is not None
        if self.group is not None and not decision.stop:
            flags = torch.tensor([self.received or 0, int(self.is_main and self._clock_due())], dtype=torch.int64)
            self._pending = (all_reduce_max_async(flags, self.group), flags)
        return decision

    def stop_received(self) -> bool:
        """Whether this process received a stop signal (local, no collective): what long work between steps
        (the monitor) polls to give up early."""
        return self.received is not None

    def agree_between_steps(self, failed: bool) -> tuple[str | None, bool]:
        """(the stop signal any rank received, whether any rank `failed`), agreed now: every rank calls it at
        the same point between steps (after the monitor). A blocking collective on the control group; the
        flags of the last step's pending reduction are folded in, so none is lost."""
        received, any_failed = self.received or 0, int(failed)
        if self.group is not None:
            if self._pending is not None:
                work, flags = self._pending
                self._pending = None
                work.wait()
                received = received or int(flags[0])
            flags = torch.tensor([received, any_failed], dtype=torch.int64)
            all_reduce_max_async(flags, self.group).wait()
            received, any_failed = flags.tolist()
        stop = signal.Signals(received).name if received else None
        self.stopping = self.stopping or stop is not None
        return stop, bool(any_failed)

    def _agreed(self, on_schedule: bool) -> Decision:
        """The flags every rank sent after the previous step, reduced (max): a stop signal, rank 0's clock."""
        if self._pending is None:
            return Decision(checkpoint=on_schedule)
        work, flags = self._pending
        self._pending = None
        work.wait()  # started a step ago on a CPU tensor: normally done already; never a device sync
        signal_number, clock_due = flags.tolist()
        return Decision(checkpoint=on_schedule or bool(clock_due),
                        stop=signal.Signals(signal_number).name if signal_number else None)

    def _clock_due(self) -> bool:
        """`train.checkpoint_minutes` have passed since the last checkpoint (or the start)."""
        return self.checkpoint_seconds > 0 and self.clock() - self._last_checkpoint >= self.checkpoint_seconds
