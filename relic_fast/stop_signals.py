"""The stop signals' handlers, installed before anything heavy is imported: SIGTERM, SIGINT and SIGUSR1
are recorded, never the default action's instant death, from the first moments of `relic-fast pretrain`.

SIGTERM (what SLURM, Kubernetes and spot instances send before they stop a job), SIGINT (Ctrl-C) and
SIGUSR1 (SLURM's `--signal` pre-timeout warning) ask a run to stop at its next agreed boundary
(`run_control.RunControl`); a SIGINT after one of them means "now" (KeyboardInterrupt). This module
imports neither torch nor DALI, so the CLI installs the handlers before it imports them (a few seconds
in which a signal would otherwise kill a rank outright, and under torchrun leave the others waiting
for it at their rendezvous).

torchrun passes a signal it receives on to its workers only if it handles that signal: SIGTERM, SIGINT,
SIGHUP and SIGQUIT by default, SIGUSR1 only with `torchrun --signals-to-handle ...,SIGUSR1` (torch >= 2.9;
the workers see the list as TORCHELASTIC_SIGNALS_TO_HANDLE), which `torchrun_signal_warning` checks.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
TORCHRUN_DEFAULT_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
"""The signals torchrun handles (and passes on to its workers) unless `--signals-to-handle` says otherwise."""


def torchrun_signal_warning(environ=os.environ) -> str | None:
    """One warning line when this process is a torchrun worker whose launcher does not pass SIGUSR1 on, else None.

    torchrun dies of a signal it does not handle, and its workers never hear of it: a scheduler's SIGUSR1
    (`sbatch --signal=USR1@120`) sent to torchrun would end the job without the checkpoint it asks for.
    torchrun tells its workers what it handles in TORCHELASTIC_SIGNALS_TO_HANDLE (torch >= 2.9); a torchrun
    that sets no such variable handles only its default signals."""
    if "TORCHELASTIC_RUN_ID" not in environ:  # not started by torchrun
        return None
    handled = environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", TORCHRUN_DEFAULT_SIGNALS)
    if "SIGUSR1" in {name.strip() for name in handled.split(",")}:
        return None
    return (f"warning: torchrun passes only {handled} on to the ranks: a SIGUSR1 sent to it (`sbatch "
            f"--signal=USR1@120`, `scancel --signal=USR1`) ends it without a checkpoint. Launch with `torchrun "
            f"--signals-to-handle {TORCHRUN_DEFAULT_SIGNALS},SIGUSR1 ...` (torch >= 2.9), or have the scheduler "
            f"send SIGTERM")


class StopSignals:
    """The stop signals' handlers, as a context manager: record the first stop signal; a SIGINT after it
    raises KeyboardInterrupt (stop now, no checkpoint).

    Installed for the whole of a `pretrain` (by the CLI before it imports torch and DALI, else by
    `trainer.pretrain` before it locks the run folder), so that a signal before the first step is not the
    default action's instant death. When the block ends the previous handlers come back, unless a stop was
    decided (`stopping`): then the process is on its way out and keeps them."""

    def __init__(self) -> None:
        self.received: int | None = None
        """The first stop signal this process received (a number)."""
        self.stopping = False
        """A stop was decided: the process is on its way out."""
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self.on_signal)
        return self

    def __exit__(self, *exc) -> None:
        if not self.stopping:
            for number, handler in self._previous.items():
                signal.signal(number, handler)
            self._previous.clear()

    def on_signal(self, number: int, frame) -> None:
        """Record the request; the run acts on it at its next agreed boundary. A SIGINT after any stop signal
        means "now": KeyboardInterrupt, no checkpoint."""
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = number
