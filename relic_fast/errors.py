"""Errors a user can cause and fix, each with its own exit code.

Library code raises these (it never prints); one place in the CLI (`cli.ErrorReportingGroup`) turns
any of them into one line and `sys.exit(code)`. The codes are part of the interface (README, "Running
on a cluster"): a job script can tell "stopped by a signal, resume me" from "the data is broken".
"""

from __future__ import annotations

import errno
import sys
from enum import IntEnum


class ExitCode(IntEnum):
    """What `relic-fast` exits with."""

    OK = 0
    UNEXPECTED = 1
    """A bug or an unforeseen failure: the full traceback is printed."""
    CONFIG = 2
    """A bad config key or value, or a bad command line."""
    DATASET = 3
    """The dataset path is missing, empty or not in the expected layout."""
    BAD_IMAGES = 4
    """Image files DALI cannot decode stopped the pipeline (each one is named)."""
    CHECKPOINT = 5
    """A checkpoint is unreadable, not relic-fast's, or would run pickled code when loaded."""
    RESUME_MISMATCH = 6
    """`--resume` with a change the resume rule refuses (`relic_fast.resume_rule`: the data, views, model, loss,
    optimizer, schedules, seed, batch, rank count); `--accept-change KEY` goes on with it on purpose."""
    NO_SPACE = 7
    """The disk filled up (the folder, the bytes needed and the bytes free are named)."""
    RUN_IN_USE = 8
    """Another live process holds the run folder's lock."""
    NON_FINITE = 9
    """The loss became NaN or infinite; the newest checkpoint is the last good state."""
    STOPPED = 75
    """Stopped early by SIGTERM, SIGINT or SIGUSR1 after writing a checkpoint (or before the first step, with
    nothing to write): `--resume` continues.
    (75 is EX_TEMPFAIL of sysexits.h: "a temporary failure; retry".)"""
    INTERRUPTED = 130
    """A second Ctrl-C (SIGINT): stopped at once, no checkpoint written (128 + SIGINT, the shell's code)."""


class RelicFastError(Exception):
    """Base of the errors a user can fix; `exit_code` says which kind, the message what to do."""

    exit_code: ExitCode = ExitCode.UNEXPECTED
    label = "error"
    """The word the CLI prints before the message."""
    rank_0_speaks = False
    """True where every rank raises the same error at the same point: only rank 0 prints it."""


class CheckpointError(RelicFastError, RuntimeError):
    """No usable checkpoint could be read; the message names the file(s) and why."""

    exit_code = ExitCode.CHECKPOINT
    label = "checkpoint error"


class ResumeMismatchError(RelicFastError, ValueError):
    """`--resume` was given a config that cannot continue the saved run; the message names the keys."""

    exit_code = ExitCode.RESUME_MISMATCH
    label = "cannot resume"


class NoSpaceError(RelicFastError, OSError):
    """A write failed because the disk is full; the message names the folder, bytes needed and free."""

    exit_code = ExitCode.NO_SPACE
    label = "no space left"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no space left on device"


class RunStopped(RelicFastError):
    """A stop signal ended the run early, after its checkpoint was written: not a failure, resume it.

    Every rank raises it at the same step (`run_control`), so rank 0 speaks for all."""

    exit_code = ExitCode.STOPPED
    label = "stopped"
    rank_0_speaks = True


class UnsafeTorchError(RelicFastError):
    """The installed torch is older than 2.6: its `torch.load(weights_only=True)` can be made to run code
    (CVE-2025-32434), so no checkpoint or exported file is loaded with it. Exit code 5, as for a checkpoint
    that would run pickled code: upgrading torch, not retrying, is the fix."""

    exit_code = ExitCode.CHECKPOINT
    label = "unsafe torch"


class NothingToDo(RelicFastError):
    """`--resume` found the run already at (or past) its last step: nothing was trained or written.

    Not a failure (exit code 0); every rank finds the same step, so rank 0 speaks for all."""

    exit_code = ExitCode.OK
    label = "nothing to do"
    rank_0_speaks = True


class RunInUseError(RelicFastError):
    """The run folder is locked by another live process; the message names its PID and host."""

    exit_code = ExitCode.RUN_IN_USE
    label = "run folder in use"


class MonitorError(RelicFastError):
    """The monitor (kNN, online probe) failed between epochs; the run checkpointed first, so `--resume`
    continues. Every rank raises it at the same point, so rank 0 speaks for all."""

    exit_code = ExitCode.UNEXPECTED
    label = "monitor failed"
    rank_0_speaks = True


# Errors of modules that cannot import this one (dali_pipelines never imports relic_fast) or that
# other code owns, by (module, class name). Looked up in `sys.modules` only: an error of a module that
# was never imported cannot have been raised, and classifying an error must not import DALI.
FOREIGN = {
    ("dali_pipelines.formats.base", "DatasetError"): (ExitCode.DATASET, "dataset error"),
    ("dali_pipelines.loader", "BadImageError"): (ExitCode.BAD_IMAGES, "unreadable images"),
    ("relic_fast.step", "NonFiniteLossError"): (ExitCode.NON_FINITE, "training stopped"),
}
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def classify(error: BaseException) -> tuple[ExitCode, str] | None:
    """(exit code, label) of a known error, or None for an unexpected one (a bug: show its traceback)."""
    if isinstance(error, RelicFastError):
        return error.exit_code, error.label
    for (module, name), known in FOREIGN.items():
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(error, cls):
            return known
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return ExitCode.NO_SPACE, "no space left"
    return None


def describe(error: BaseException) -> str:
    """The message of a known error (an OSError's names the file it was writing)."""
    if isinstance(error, OSError) and not isinstance(error, RelicFastError) and error.filename:
        return f"{error.strerror or error} while writing {error.filename}"
    return str(error)
