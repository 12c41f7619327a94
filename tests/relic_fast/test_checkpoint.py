"""Checkpoint files: safe loading (a crafted pickle is refused and never runs) and a full disk (one
clear error, the previous checkpoints intact, no temporary file left), in-process and through the CLI."""

import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

import cli_process
from relic_fast import checkpoint
from relic_fast.checkpoint import (CheckpointError, checkpoint_path, latest_checkpoint, list_checkpoints,
                                   read_checkpoint, save_checkpoint)
from relic_fast.errors import ExitCode, NoSpaceError


class CreatesAFile:
    """Unpickling this calls open(path, "w"): what any code in a downloaded "checkpoint" could do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def crafted(path: Path, marker: Path, as_zip: bool) -> Path:
    """A file that looks like a checkpoint but creates `marker` when unpickled (torch's zip or a bare pickle)."""
    payload = {"format": checkpoint.FORMAT_VERSION, "step": 1, "online": CreatesAFile(marker)}
    if as_zip:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def small_state(step: int) -> dict:
    """A state with every kind of value a real checkpoint holds (tensors, RNG bytes, strings, nested config)."""
    return {"step": step, "online": {"w": torch.full((4, 4), float(step))}, "target": {"w": torch.zeros(4, 4)},
            "rng": {"cpu": torch.get_rng_state()}, "loader": ['{"format": "relic-fast-loader/1"}'],
            "config": {"model": {"encoder": "resnet18", "sizes": (1, 2)}}, "scaler": None, "world_size": 1}


@pytest.mark.parametrize("as_zip", [True, False], ids=["torch-zip", "bare-pickle"])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, as_zip):
    marker = tmp_path / "created-by-unpickling"
    path = crafted(tmp_path / "evil.pt", marker, as_zip)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()


def test_a_crafted_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    save_checkpoint(small_state(1), tmp_path, 1, keep=3)
    marker = tmp_path / "created-by-unpickling"
    evil = crafted(checkpoint_path(tmp_path, 2), marker, as_zip=True)
    warnings: list[str] = []
    path, state = latest_checkpoint(tmp_path, warn=warnings.append)
    assert path == checkpoint_path(tmp_path, 1) and state["step"] == 1
    assert str(evil) in warnings[0] and not marker.exists()


def test_checkpoint_of_plain_values_loads_with_weights_only(tmp_path):
    path = save_checkpoint(small_state(3), tmp_path, 3, keep=3)
    state = torch.load(path, weights_only=True)
    assert state["step"] == 3 and state["config"]["model"]["sizes"] == (1, 2)


def fill_disk_after(first_saves: int, free: int = 1000):
    """Patch the writer: `first_saves` succeed, later ones write a little and fail as torch's zip writer
    fails on a full disk; the disk reports `free` bytes."""
    real_save, real_usage, calls = torch.save, checkpoint.shutil.disk_usage, []

    def save(obj, handle):
        calls.append(1)
        if len(calls) <= first_saves:
            return real_save(obj, handle)
        handle.write(b"\0" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    return save, lambda path: real_usage(path)._replace(free=free)


def test_full_disk_raises_one_clear_error_and_keeps_previous_checkpoints(tmp_path, monkeypatch):
    save, usage = fill_disk_after(1)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", usage)
    first = save_checkpoint(small_state(1), tmp_path, 1, keep=1)
    with pytest.raises(NoSpaceError) as info:
        save_checkpoint(small_state(2), tmp_path, 2, keep=1)
    message = str(info.value)
    assert str(first.parent) in message and "1,000 bytes" in message and first.name in message
    needed = int(message.split("needs about ")[1].split(" bytes")[0].replace(",", ""))
    assert needed >= 2 * 16 * 4  # at least the two 4x4 float tensors
    assert list_checkpoints(tmp_path) == [first] and read_checkpoint(first)["step"] == 1
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temporary file left


def test_a_write_failure_with_space_left_is_not_called_a_full_disk(tmp_path, monkeypatch):
    save, usage = fill_disk_after(0, free=10**12)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", usage)
    with pytest.raises(RuntimeError, match="file write failed") as info:
        save_checkpoint(small_state(1), tmp_path, 1, keep=1)
    assert not isinstance(info.value, NoSpaceError)
    assert not list(checkpoint.checkpoint_dir(tmp_path).iterdir())


PATCHED_FULL_DISK = '''
import relic_fast.checkpoint as c, test_checkpoint as t
c.torch.save, c.shutil.disk_usage = t.fill_disk_after(1)
'''
"""The CLI's prelude where no tmpfs can be mounted: the second checkpoint meets a full disk."""


@pytest.fixture()
def small_disk(tmp_path):
    """(folder, prelude): a 200 MiB tmpfs where this machine lets us mount one (one tiny-recipe checkpoint
    is ~135 MB, so the second does not fit), else a plain folder and the patched writer."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    yield folder, "" if mounted else PATCHED_FULL_DISK
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.slow
def test_cli_full_disk_is_one_line_naming_folder_and_sizes(tiny_demo, small_disk):
    folder, prelude = small_disk
    run = folder / "run"
    args = cli_process.pretrain_args(tiny_demo, run, 3, "--set", "train.checkpoint_every=1")
    code, output = cli_process.run(args, prelude)
    assert code == ExitCode.NO_SPACE, output
    assert f"no space left: {run / 'checkpoints'}" in output and "needs about" in output and "free" in output
    assert "Traceback" not in output, output
    kept = list_checkpoints(run)
    assert [p.name for p in kept] == ["step-000000001.pt"] and read_checkpoint(kept[0])["step"] == 1
    assert not [p for p in kept[0].parent.iterdir() if p.name.startswith(".tmp-")]


def test_cli_refuses_a_crafted_checkpoint(tiny_demo, tmp_path):
    marker = tmp_path / "created-by-unpickling"
    evil = crafted(tmp_path / "downloaded.pt", marker, as_zip=True)
    code, output = cli_process.run(["linear-eval", "--checkpoint", str(evil), "--data", str(tiny_demo)])
    assert code == ExitCode.CHECKPOINT, output
    assert f"checkpoint error: {evil}: refused to load" in output and "Traceback" not in output, output
    assert not marker.exists()
