"""The run folder's lock (`relic_fast.runlock`): one live owner at a time, whoever races for it.

The racing processes are `runlock_worker.py` children that read every owner record slowly: two of
them that both judged a lock stale used to both take it over. Each test takes a few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from relic_fast import runlock
from relic_fast.errors import RunInUseError
from relic_fast.runlock import LOCK_NAME, RunLock, process_start

from tests.support.runlock_worker import Worker

ROUNDS = 30
SLOW_READ_S = 0.02
"""How much longer each worker takes to parse an owner record: far longer than the two workers'
start-up skew (they are told to acquire within a millisecond of each other)."""


@pytest.fixture()
def workers():
    """A factory of workers, all ended after the test."""
    started: list[Worker] = []

    def start(slow_read_s: float = 0.0) -> Worker:
        started.append(Worker(slow_read_s))
        return started[-1]

    yield start
    for worker in started:
        worker.close()


def dead_pid() -> int:
    """The PID of a process that has ended (nothing runs under it now, barring reuse within the test)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def record_of(pid: int) -> dict:
    """An owner record for process `pid` of this host in the oldest format (PID, host, start time)."""
    return {"pid": pid, "host": socket.gethostname(), "start": process_start(pid)}


def lock_file(run: Path) -> Path:
    """The lock file of run folder `run`."""
    return run / LOCK_NAME


def read_record(run: Path) -> dict:
    """The owner record in `run`'s lock file."""
    return json.loads(lock_file(run).read_text())


STALE_LOCKS = {
    "none": None,
    "dead owner": lambda: json.dumps(record_of(dead_pid())),
    "empty file": lambda: "",
}


@pytest.mark.parametrize("left_behind", list(STALE_LOCKS))
def test_two_processes_racing_for_a_run_folder_never_both_win(workers, tmp_path, left_behind):
    """Two processes ask for the same folder at the same moment, `ROUNDS` times: exactly one gets it,
    whether the folder had no lock, the lock of a dead process or an empty lock file."""
    racers = [workers(SLOW_READ_S), workers(SLOW_READ_S)]
    for round_ in range(ROUNDS):
        run = tmp_path / f"round-{round_}"
        run.mkdir()
        if STALE_LOCKS[left_behind] is not None:
            lock_file(run).write_text(STALE_LOCKS[left_behind]())
        for racer in racers:
            racer.send(f"acquire {run}")
        answers = [racer.answer() for racer in racers]
        winners = [racer.pid for racer, answer in zip(racers, answers) if answer == "won"]
        assert len(winners) == 1, f"round {round_}: {answers}"
        assert read_record(run)["pid"] == winners[0]
        assert all(answer == "won" or answer.startswith("lost: ") for answer in answers), answers
        for racer in racers:
            assert racer.ask("release") == "released"
        assert not lock_file(run).exists()


def test_a_live_lock_is_refused_naming_its_owner(workers, tmp_path):
    holder = workers()
    assert holder.ask(f"acquire {tmp_path}") == "won"
    before = lock_file(tmp_path).read_text()
    with pytest.raises(RunInUseError) as refused:
        RunLock(tmp_path).acquire()
    message = str(refused.value)
    owner = json.loads(before)
    assert f"process {holder.pid} on {socket.gethostname()}" in message, message
    assert f"since {owner['since']}" in message, message
    assert str(lock_file(tmp_path)) in message
    assert lock_file(tmp_path).read_text() == before  # not taken from its owner


def test_a_live_owner_whose_pid_means_nothing_here_is_refused(workers, tmp_path):
    """A run in another PID namespace of this host (a container) records a PID that names no process,
    or another one, here: it holds the lock all the same."""
    holder = workers()
    assert holder.ask(f"acquire {tmp_path}") == "won"
    seen_from_elsewhere = {**read_record(tmp_path), "pid": dead_pid(), "start": "1", "pid_ns": 1}
    lock_file(tmp_path).write_text(json.dumps(seen_from_elsewhere))  # in place: the holder keeps its lock
    with pytest.raises(RunInUseError, match=f"process {seen_from_elsewhere['pid']} "):
        RunLock(tmp_path).acquire()
    assert read_record(tmp_path) == seen_from_elsewhere


def test_the_lock_of_a_killed_process_is_taken_over(workers, tmp_path):
    victim = workers()
    assert victim.ask(f"acquire {tmp_path}") == "won"
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait()
    lock = RunLock(tmp_path).acquire()
    try:
        assert lock.note is not None and f"took over the stale lock {lock_file(tmp_path)}" in lock.note
        assert f"process {victim.pid}" in lock.note
        assert read_record(tmp_path)["pid"] == os.getpid()
    finally:
        lock.release()
    assert not lock_file(tmp_path).exists()


def test_an_empty_lock_file_is_taken_over(tmp_path):
    lock_file(tmp_path).write_text("")
    with RunLock(tmp_path) as lock:
        assert read_record(tmp_path)["pid"] == os.getpid()
        assert lock.note == f"took over the empty lock file {lock_file(tmp_path)} (no owner recorded in it)"
    assert not lock_file(tmp_path).exists()


def test_a_lock_from_another_host_is_respected(tmp_path):
    """Whether a process on another machine still runs cannot be checked from here."""
    elsewhere = {"pid": 4242, "host": "another-host.example", "start": "77", "since": "2025-01-02 03:04:05"}
    lock_file(tmp_path).write_text(json.dumps(elsewhere))
    with pytest.raises(RunInUseError, match="process 4242 on another-host.example since 2025-01-02 03:04:05"):
        RunLock(tmp_path).acquire()
    assert read_record(tmp_path) == elsewhere


def test_a_lock_from_an_earlier_boot_of_this_host_is_taken_over(tmp_path):
    """A reboot ends every process: the record's PID and start time, read against this boot, would
    name whatever runs under that PID now (here: this very process), so they are not consulted."""
    if runlock.boot_id() is None:
        pytest.skip("no /proc/sys/kernel/random/boot_id here")
    earlier_boot = {**record_of(os.getpid()), "boot_id": "00000000-0000-0000-0000-000000000000", "pid_ns": 1}
    lock_file(tmp_path).write_text(json.dumps(earlier_boot))
    with RunLock(tmp_path) as lock:
        assert lock.note is not None and "earlier boot" in lock.note
        assert read_record(tmp_path)["boot_id"] == runlock.boot_id()


def test_without_file_locks_a_stale_lock_is_kept_but_a_free_folder_is_taken(tmp_path, monkeypatch):
    """Where the filesystem has no `flock` (some network filesystems), a lock is still created
    atomically, but none is taken over: who holds it cannot be told safely."""
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    free, stale = tmp_path / "free", tmp_path / "stale"
    with RunLock(free):
        assert read_record(free)["pid"] == os.getpid()
        with pytest.raises(RunInUseError, match=f"process {os.getpid()} "):
            RunLock(free).acquire()
    assert not lock_file(free).exists()
    stale.mkdir()
    dead = record_of(dead_pid())
    lock_file(stale).write_text(json.dumps(dead))
    with pytest.raises(RunInUseError, match="no file locks"):
        RunLock(stale).acquire()
    assert read_record(stale) == dead


def test_a_record_of_a_live_process_that_holds_no_flock_is_respected(tmp_path):
    """Records without a boot id come from relic-fast versions that held no flock: their PID and start
    time tell whether they still run."""
    live = subprocess.Popen(["sleep", "60"])
    try:
        owner = record_of(live.pid)
        lock_file(tmp_path).write_text(json.dumps(owner))
        with pytest.raises(RunInUseError, match=f"in use by process {live.pid} on {socket.gethostname()} ") as refused:
            RunLock(tmp_path).acquire()
    finally:
        live.kill()
        live.wait()
    assert "another host" not in str(refused.value)
    assert read_record(tmp_path) == owner
