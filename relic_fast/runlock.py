"""One run folder, one live run: the process that writes into `RUN_DIR` holds `RUN_DIR/run.lock`.

Two processes writing checkpoints into the same folder would rotate each other's files away and
resume from each other's state. The owner holds an exclusive `flock` on `run.lock` for the run's
life, and the kernel lets go of it when the process ends, however it ends (kill -9 included). So on
one machine "does the owner still run?" is "is the flock held?", whatever PID namespace (container)
the owner runs in, and taking a stale lock over is one step that two processes cannot both win: the
one holding the flock decides, the other is refused. The file also holds the owner's record (PID,
host, start time, boot id, PID namespace) to name it in the error a second process gets.

While holding a free flock, a process judges the record it finds (`stale_reason`):
- empty or unreadable: stale (a live owner writes its record only once it holds the flock);
- from this kernel (same boot id) or, where boot ids are unknown, this host: stale, its flock is free;
- from this host but an earlier boot: stale, the reboot ended it;
- from another host: respected. Whether it still runs cannot be checked from here (a network
  filesystem may not pass flocks between machines): delete the file only if no run uses the folder;
- without a boot id (written by a relic-fast that held no flock): its PID and start time are checked.
Where the filesystem has no flock at all, the lock file is created atomically (O_EXCL) and a lock
that exists is never taken over: who holds it cannot be told safely.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from relic_fast.errors import RunInUseError

LOCK_NAME = "run.lock"
ATTEMPTS = 50
"""Tries to open and lock the file before giving up; a try is repeated only when the file was removed
or replaced between opening and locking it (its owner releasing it at that moment)."""
NO_FILE_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
"""What `flock` raises on a filesystem that does not support it (some NFS, Lustre and FUSE mounts)."""
RECORD_BYTES = 1 << 16


def process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (clock ticks since boot), or None where /proc is absent.

    With the PID it names one process: a recycled PID has a different start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after the command name


def boot_id() -> str | None:
    """This kernel's boot id (new at every boot, shared by every container of the machine), or None
    where /proc is absent: a PID and a start time mean something only within one boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def pid_namespace() -> int | None:
    """The inode of this process's PID namespace, or None where /proc is absent: a PID recorded in
    another namespace (another container) names a different process, or none, here."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def owner_record() -> dict:
    """This process as a lock's owner: PID, host, start time, when it took the lock, boot, PID namespace."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": process_start(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "boot_id": boot_id(), "pid_ns": pid_namespace()}


def _legacy_alive(owner: dict) -> bool:
    """Whether the process of a record written without a flock still runs, by its PID and start time
    (True when this host cannot tell)."""
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


def stale_reason(owner: dict | None, me: dict) -> str | None:
    """What a lock whose flock is free (this process holds it) was left by, if its owner provably no
    longer runs; None if the owner may still run and must be respected. `owner` None: unreadable."""
    if owner is None:
        return "an unreadable record"
    who = f"process {owner.get('pid')} on {owner.get('host')}"
    if "boot_id" not in owner:  # written by a relic-fast that held no flock: only its PID can tell
        try:
            return None if _legacy_alive(owner) else f"{who} (no longer running)"
        except (TypeError, ValueError):  # a PID that is not a number
            return "an unreadable record"
    if owner["boot_id"] is not None and owner["boot_id"] == me["boot_id"]:
        return f"{who} (no longer running)"  # one kernel: the free flock says so, in any PID namespace
    if owner.get("host") != me["host"]:
        return None
    if owner["boot_id"] is not None and me["boot_id"] is not None:
        return f"{who} (from an earlier boot of this host)"
    return f"{who} (no longer running)"  # this host, boot ids unknown: the free flock says so


def _open_or_create(path: Path) -> tuple[int | None, bool]:
    """A read-write descriptor of the lock file and whether this call created it (empty); (None,
    False) if it was removed between the two tries (its owner releasing it)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        pass
    try:
        return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        return None, False


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd` (not removed or replaced since it was opened)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _read_text(fd: int) -> bytes:
    return os.pread(fd, RECORD_BYTES, 0)


def _parse(text: bytes) -> dict | None:
    """The owner record in a lock file's text, or None if it is empty or not a record."""
    try:
        owner = json.loads(text)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _write_record(fd: int, record: dict) -> None:
    """Replace the file's record in place: the flock belongs to this file, a renamed one would lose it."""
    data = json.dumps(record).encode()
    os.pwrite(fd, data, 0)  # over the old record, so that a reader never finds the file empty
    os.ftruncate(fd, len(data))
    os.fsync(fd)  # readers on other hosts of a network filesystem see it


def _describe(owner: dict | None, me: dict) -> str:
    """The owner as an error names it: PID, host, since when, and its PID namespace if not this one."""
    if owner is None:
        return "another process (its record is not written yet or unreadable)"
    text = f"process {owner.get('pid')} on {owner.get('host')}"
    if owner.get("since"):
        text += f" since {owner['since']}"
    same_kernel = owner.get("boot_id") is not None and owner.get("boot_id") == me["boot_id"]
    if same_kernel and None not in (owner.get("pid_ns"), me["pid_ns"]) and owner.get("pid_ns") != me["pid_ns"]:
        text += " (in another PID namespace, e.g. a container: `ps` here does not list it)"
    return text


class RunLock:
    """The lock of one run folder, held from `acquire` to `release` (or as a context manager)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.me = owner_record()
        self.note: str | None = None
        """Set by `acquire` when it took over a stale lock: what it took over (for the run's log)."""
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise `RunInUseError` naming the process that holds it (PID, host, since when)."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.me = owner_record()
        for _ in range(ATTEMPTS):
            fd, created = _open_or_create(self.path)
            if fd is None:
                continue
            try:
                held = self._hold(fd, created)
            except BaseException:
                os.close(fd)
                raise
            if held:
                self._fd = fd
                return self
            os.close(fd)
        raise RunInUseError(f"{self.path.parent}: its lock file {self.path} was removed or replaced {ATTEMPTS} "
                            f"times while this process tried to take it; another process is taking the folder")

    def _hold(self, fd: int, created: bool) -> bool:
        """Lock the open file `fd` and write this process's record into it: True when held, False when
        the file was removed or replaced meanwhile (try again); `RunInUseError` if its owner may run."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not _names(self.path, fd):
                return False  # its owner is releasing it (removed, not yet closed)
            raise self._in_use(_parse(_read_text(fd))) from None
        except OSError as err:
            if err.errno not in NO_FILE_LOCKS:
                raise
            return self._hold_without_flock(fd, created)
        if not _names(self.path, fd):
            return False  # released by its owner between our open and our flock: a new file is due
        text = _read_text(fd)
        if not text and not created:  # its creator ended before writing it, or is refused at this moment
            self.note = f"took over the empty lock file {self.path} (no owner recorded in it)"
        elif text:
            owner = _parse(text)
            reason = stale_reason(owner, self.me)
            if reason is None:
                elsewhere = owner.get("host") != self.me["host"]
                raise self._in_use(owner, "a process on another host cannot be checked from here" if elsewhere else "")
            self.note = f"took over the stale lock {self.path} of {reason}"
        _write_record(fd, self.me)
        return True

    def _hold_without_flock(self, fd: int, created: bool) -> bool:
        """On a filesystem without flock: the file is this process's only if this process created it."""
        if not created:
            raise self._in_use(_parse(_read_text(fd)), "this filesystem has no file locks, so whether it still "
                                                        "runs cannot be checked and its lock is never taken over")
        _write_record(fd, self.me)
        return True

    def _in_use(self, owner: dict | None, why: str = "") -> RunInUseError:
        """The error naming the folder's owner, with what to do about it."""
        because = f"; {why}" if why else ""
        return RunInUseError(f"{self.path.parent} is in use by {_describe(owner, self.me)} (lock file {self.path}"
                             f"{because}); wait for it, stop it, or use another --out. Delete the lock file only if "
                             f"no run uses the folder")

    def release(self) -> None:
        """Give the lock back: remove the file while still holding it (a process that opened it meanwhile
        then finds it gone and tries again with a new one), then let go of the flock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _names(self.path, fd):  # not if someone deleted it by hand and another run made a new one
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
