"""The `relic-fast` CLI as a real child process, for tests that send it signals or read its exit code."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support import REPO
from tests.support.tiny_recipe import DEMO_RECIPE, TINY_OVERRIDES

SLOW_STEPS = ("import time, relic_fast.trainer as t; real = t.train_step; "
              "t.train_step = lambda *a, **k: (time.sleep({seconds}), real(*a, **k))[1]; ")
"""A `prelude` that makes every training step take at least `seconds` longer: a signal sent during a
step then lands in that step whatever the machine's speed."""


def pretrain_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """`pretrain` arguments for the tiny recipe on `data`, writing into `out`."""
    args = ["pretrain", "--config", str(DEMO_RECIPE), "--data", str(data), "--out", str(out), "--steps", str(steps)]
    for item in TINY_OVERRIDES:
        args += ["--set", item]
    return args + list(extra)


def command(args: list[str], prelude: str = "", ranks: int = 0) -> list[str]:
    """The child's command line; `prelude` (Python) runs before the CLI, e.g. to patch a function;
    `ranks` > 0 launches that many processes with `torchrun --standalone` (gloo on CPU)."""
    if ranks:
        assert not prelude, "torchrun runs a module, not a prelude"
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                "-m", "relic_fast", *args]
    if not prelude:
        return [sys.executable, "-m", "relic_fast", *args]
    return [sys.executable, "-c", prelude + "from relic_fast.cli import app; app(prog_name='relic-fast')", *args]


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the repository importable (`tests.support` too, for a prelude). The
    thread count stays this process's: a run resumed in-process must compute as the child did."""
    path = [str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("RELIC_FAST_DEBUG", None)
    return {**env, **extra}


def start(args: list[str], prelude: str = "", ranks: int = 0, **env: str) -> subprocess.Popen:
    """Start the CLI (see `command`); its stdout and stderr are read together by `finish`."""
    return subprocess.Popen(command(args, prelude, ranks), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=child_env(**env), cwd=REPO)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Wait for the child; its exit code and output."""
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def run(args: list[str], prelude: str = "", ranks: int = 0, timeout: float = 600, **env: str) -> tuple[int, str]:
    """Run the CLI to the end: exit code and output."""
    return finish(start(args, prelude, ranks, **env), timeout)


def worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the worker processes a torchrun child started (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if parent == launcher.pid else []
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `path` exists, failing if the child exits first or the time runs out."""
    deadline = time.time() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the child exited ({process.returncode}) before {path} appeared:\n"
                                 f"{process.communicate()[0]}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def signal_when(path: Path, process: subprocess.Popen, *signals: int, gap: float = 0.5) -> tuple[int, str]:
    """Once `path` exists, send `signals` to the child `gap` seconds apart; its exit code and output.
    SIGKILL gives no output (the pipe is dropped)."""
    wait_for(path, process)
    for number, pause in zip(signals, [0.0] + [gap] * (len(signals) - 1)):
        time.sleep(pause)
        os.kill(process.pid, number)
    if signal.SIGKILL in signals:
        process.kill()
        process.wait()
        return process.returncode, ""
    return finish(process)
