"""Known errors through the real CLI: one line (no traceback), a documented exit code each, the rank
under torchrun, and the full traceback with --debug or RELIC_FAST_DEBUG=1. Also the run folder's lock."""

import json
import socket
import subprocess

import pytest

from relic_fast.checkpoint import checkpoint_path, list_checkpoints
from relic_fast.errors import ExitCode
from relic_fast.runlock import LOCK_NAME, process_start

from tests.support import cli_process


def one_error_line(output: str, label: str) -> str:
    """The single `label: ...` line of `output`, asserting that no traceback came with it."""
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if f"{label}:" in line]
    assert len(lines) == 1, output
    return lines[0]


def bad_batch(tiny_demo, tmp_path) -> list[str]:
    return cli_process.pretrain_args(tiny_demo, tmp_path / "run", 1, "--set", "train.batch_size=1")


def test_config_error_is_one_line_with_code_2(tiny_demo, tmp_path):
    code, output = cli_process.run(bad_batch(tiny_demo, tmp_path))
    assert code == ExitCode.CONFIG
    assert "'train.batch_size': must be >= 2" in one_error_line(output, "config error")


@pytest.mark.parametrize("switch", ["flag", "environment"])
def test_debug_shows_the_traceback_and_keeps_the_code(tiny_demo, tmp_path, switch):
    args = bad_batch(tiny_demo, tmp_path)
    if switch == "flag":
        code, output = cli_process.run(["--debug", *args])
    else:
        code, output = cli_process.run(args, RELIC_FAST_DEBUG="1")
    assert code == ExitCode.CONFIG
    assert "Traceback" in output and "config error:" in output, output


def test_under_torchrun_the_error_line_names_the_rank(tiny_demo, tmp_path):
    code, output = cli_process.run(bad_batch(tiny_demo, tmp_path), RANK="1", WORLD_SIZE="2")
    assert code == ExitCode.CONFIG
    assert one_error_line(output, "config error").startswith("rank 1/2: config error:")


@pytest.mark.parametrize("layout", ["missing", "empty"])
def test_missing_or_empty_dataset_is_one_line_with_code_3(tmp_path, layout):
    data = tmp_path / "data"
    if layout == "empty":
        (data / "some_class").mkdir(parents=True)
    code, output = cli_process.run(cli_process.pretrain_args(data, tmp_path / "run", 1))
    assert code == ExitCode.DATASET, output
    assert str(data) in one_error_line(output, "dataset error")


def test_bad_images_are_named_without_dali_traceback(messy_tree, tmp_path):
    code, output = cli_process.run(cli_process.pretrain_args(messy_tree, tmp_path / "run", 1,
                                                             "--set", "views.saliency_p=0"))  # a tree without masks
    assert code == ExitCode.BAD_IMAGES, output
    headline = one_error_line(output, "unreadable images")
    assert "stopped the DALI pipeline" in headline
    assert "relic-fast index" in output and "Critical error in pipeline" not in output, output
    assert any(name in output for name in ("truncated.jpg", "notes.jpg")), output


def write_lock(run, pid: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "start": process_start(pid)}))


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_run_folder_in_use_by_a_live_process_is_refused(tiny_demo, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(["sleep", "600"])
    try:
        write_lock(run, holder.pid)
        code, output = cli_process.run(cli_process.pretrain_args(tiny_demo, run, 1))
    finally:
        holder.kill()
        holder.wait()
    assert code == ExitCode.RUN_IN_USE, output
    assert f"in use by process {holder.pid}" in one_error_line(output, "run folder in use")
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # not taken from its owner
    assert not list_checkpoints(run)


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory, tiny_demo):
    """A run folder with a step-1 checkpoint, started over the stale lock of a dead process (through the CLI)."""
    run = tmp_path_factory.mktemp("one_step") / "run"
    write_lock(run, dead_pid())
    code, output = cli_process.run(cli_process.pretrain_args(tiny_demo, run, 1))
    return run, code, output


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over(one_step_run):
    run, code, output = one_step_run
    assert code == 0, output
    assert "took over the stale lock" in output and checkpoint_path(run, 1).is_file()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_resume_with_another_model_or_batch_is_refused(one_step_run, tiny_demo):
    run = one_step_run[0]
    args = cli_process.pretrain_args(tiny_demo, run, 2, "--resume", "--set", "model.embedding_dim=16",
                                     "--set", "train.batch_size=16")
    code, output = cli_process.run(args)
    assert code == ExitCode.RESUME_MISMATCH, output
    line = one_error_line(output, "cannot resume")
    assert "model.embedding_dim = 32 in the checkpoint, 16 now" in line and "train.batch_size = 8" in line
    assert [p.name for p in list_checkpoints(run)] == ["step-000000001.pt"]


def test_resume_from_only_unusable_checkpoints_is_code_5(tiny_demo, tmp_path):
    run = tmp_path / "run"
    broken = checkpoint_path(run, 1)
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    code, output = cli_process.run(cli_process.pretrain_args(tiny_demo, run, 2, "--resume"))
    assert code == ExitCode.CHECKPOINT, output
    assert f"no usable checkpoint in {broken.parent}" in output and "Traceback" not in output, output
