"""One run folder, one live run: `RUN_DIR/run.lock` holds the PID, host and start time of its owner.

Two processes writing checkpoints into the same folder would rotate each other's files away and
resume from each other's state. The lock is created atomically (a link that fails if the name
exists); a lock whose process is gone (killed with -9, a crashed node) is stale and taken over; one
whose process runs on another host cannot be checked from here and is respected.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from relic_fast.errors import RunInUseError

LOCK_NAME = "run.lock"


def process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (clock ticks since boot), or None where /proc is absent.

    With the PID it names one process: a recycled PID has a different start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def _alive(owner: dict) -> bool:
    """Whether the process named in a lock's `owner` record still runs (True when this host cannot tell)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    started = owner.get("start")
    return started is None or process_start(pid) in (None, started)


def _create_exclusive(source: Path, path: Path) -> None:
    """Give `path` the content of `source` in one step, raising FileExistsError if `path` exists.

    A hard link is atomic on local disks and NFS; where links are not supported, an O_EXCL create
    (atomic too, but readers may briefly see it empty) is the fallback."""
    try:
        os.link(source, path)
    except FileExistsError:
        raise
    except OSError:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(source.read_text())


class RunLock:
    """The lock of one run folder, held from `acquire` to `release` (or as a context manager)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid())}
        self.note: str | None = None
        """Set by `acquire` when it took over a stale lock: what it took over (for the run's log)."""

    def acquire(self) -> "RunLock":
        """Take the lock, or raise `RunInUseError` naming the live process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LOCK_NAME}.{os.getpid()}")
        tmp.write_text(json.dumps(self.me))
        try:
            try:
                _create_exclusive(tmp, self.path)
                return self
            except FileExistsError:
                owner = self._owner()
            if owner is not None and owner != self.me and _alive(owner):
                raise RunInUseError(f"{self.path.parent} is in use by process {owner.get('pid')} on "
                                    f"{owner.get('host')} (lock file {self.path}); wait for it, stop it, or use "
                                    f"another --out. Delete the lock file only if no run uses the folder")
            if owner is not None and owner != self.me:
                self.note = f"took over the stale lock {self.path} of process {owner.get('pid')} (no longer running)"
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        if self._owner() != self.me:  # another process took the stale lock at the same moment
            raise RunInUseError(f"{self.path.parent} was just locked by another process ({self.path})")
        return self

    def _owner(self) -> dict | None:
        """The record in the lock file, or None if it vanished or is unreadable (treated as stale)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if self._owner() == self.me:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
