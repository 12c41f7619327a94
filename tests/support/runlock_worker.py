"""A process that takes and gives back run locks on command, for the run-lock tests; `Worker` starts
one and talks to it.

Usage: `python -m tests.support.runlock_worker DELAY_S`; then one command per line on stdin, one answer per line on
stdout: `acquire RUN_DIR` answers `won` or `lost: <message>` (the lock stays held until `release`),
`release` answers `released`. With DELAY_S > 0 every owner record the lock module parses takes that
much longer to read: the time between reading a lock's owner and acting on it, where two processes
that both judged the same lock stale used to both take it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from relic_fast import runlock
from relic_fast.errors import RunInUseError

from tests.support import REPO


def child_env() -> dict[str, str]:
    """This environment with the repository importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


class SlowJson:
    """The json module, with `loads` made `delay` seconds slower (the race window, widened)."""

    def __init__(self, delay: float):
        self.delay = delay

    def __getattr__(self, name: str):
        return getattr(json, name)

    def loads(self, text, *args, **kwargs):
        """json.loads after a pause."""
        time.sleep(self.delay)
        return json.loads(text, *args, **kwargs)


class Worker:
    """A `runlock_worker.py` child: `ask` sends one command and returns its one-line answer."""

    def __init__(self, slow_read_s: float = 0.0):
        self.process = subprocess.Popen([sys.executable, __file__, str(slow_read_s)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=child_env())
        self.pid = self.process.pid

    def send(self, command: str) -> None:
        """Send a command without waiting for its answer (to start two workers together)."""
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def answer(self) -> str:
        """The next answer line."""
        line = self.process.stdout.readline()
        assert line, f"worker {self.pid} died (exit code {self.process.poll()})"
        return line.strip()

    def ask(self, command: str) -> str:
        """Send a command and wait for its answer."""
        self.send(command)
        return self.answer()

    def close(self) -> None:
        """End the worker (its lock, if any, goes with it)."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve(delay: float) -> None:
    """Answer commands from stdin until it closes."""
    if delay > 0:
        runlock.json = SlowJson(delay)
    held = None
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "acquire":
            try:
                held = runlock.RunLock(argument).acquire()
                print("won", flush=True)
            except RunInUseError as err:
                print(f"lost: {err}", flush=True)
        elif command == "release":
            if held is not None:
                held.release()
                held = None
            print("released", flush=True)


if __name__ == "__main__":
    serve(float(sys.argv[1]))
