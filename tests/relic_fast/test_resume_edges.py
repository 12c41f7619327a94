"""A run folder at the edges of `pretrain --resume`: a resume with nothing left to train, the leftovers of a
checkpoint write cut short by SIGKILL, and a folder another run holds."""

import json
import shutil
import socket

import pytest
from typer.testing import CliRunner

from relic_fast.checkpoint import checkpoint_dir, list_checkpoints
from relic_fast.cli import app
from relic_fast.errors import ExitCode

from tests.support import cli_process


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory, tiny_demo):
    """A tiny run stopped by `--steps 2` (its only checkpoint: step 2); tests work on copies of it."""
    run = tmp_path_factory.mktemp("two-steps") / "run"
    result = CliRunner().invoke(app, cli_process.pretrain_args(tiny_demo, run, 2))
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture()
def run_copy(two_step_run, tmp_path):
    """A copy of `two_step_run` this test may change."""
    return shutil.copytree(two_step_run, tmp_path / "run")


def snapshot(run):
    """What a resume that does nothing must leave as it was: the checkpoints (name, size, mtime) and the metrics."""
    files = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in list_checkpoints(run)]
    return files, (run / "metrics.jsonl").read_text()


@pytest.mark.parametrize("steps", [2, 1], ids=["at-steps", "past-steps"])
def test_resume_with_no_step_left_does_nothing_and_says_so(tiny_demo, run_copy, steps):
    before = snapshot(run_copy)
    result = CliRunner().invoke(app, cli_process.pretrain_args(tiny_demo, run_copy, steps, "--resume"))
    assert result.exit_code == 0, result.output
    assert snapshot(run_copy) == before, "a resume past --steps trained or wrote a checkpoint"
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nothing to do:"), result.output
    text = " ".join(result.output.split())
    assert "step 2" in text and "step-000000002.pt" in text and f"--steps {steps}" in text, text


def test_a_start_removes_the_leftovers_of_an_interrupted_checkpoint_write(tiny_demo, run_copy):
    leftover = checkpoint_dir(run_copy) / ".tmp-k1ll3d.pt"  # what a SIGKILL during torch.save leaves
    leftover.write_bytes(b"\0" * 4096)
    result = CliRunner().invoke(app, cli_process.pretrain_args(tiny_demo, run_copy, 2, "--resume"))
    assert result.exit_code == 0, result.output
    assert not leftover.exists(), "the temporary file of an interrupted checkpoint write was left behind"
    assert leftover.name in result.output


def test_the_leftovers_of_a_run_in_use_are_not_touched(tiny_demo, run_copy):
    in_progress = checkpoint_dir(run_copy) / ".tmp-wr1t1ng.pt"  # the other run may be writing it right now
    in_progress.write_bytes(b"\0" * 4096)
    (run_copy / "run.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "start": None}))
    result = CliRunner().invoke(app, cli_process.pretrain_args(tiny_demo, run_copy, 4, "--resume"))
    assert result.exit_code == ExitCode.RUN_IN_USE, result.output
    assert in_progress.exists()
