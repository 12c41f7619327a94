"""Checkpoint files: safe loading (a crafted pickle is refused and never runs) and a full disk (one
clear error, the previous checkpoints intact, no temporary file left), in-process and through the CLI."""

import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from relic_fast import checkpoint
from relic_fast.checkpoint import (CheckpointError, checkpoint_path, latest_checkpoint, list_checkpoints,
                                   read_checkpoint, save_checkpoint)
from relic_fast.errors import ExitCode, NoSpaceError

from tests.support import REPO, cli_process


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


# ---------------------------------------------------------------- a torch whose weights_only can run code

OLD_TORCH = "2.5.1+cu124"
"""A torch whose `torch.load(weights_only=True)` a crafted file can make run code (CVE-2025-32434, fixed in 2.6)."""


def pretend_old_torch(monkeypatch) -> list:
    """Make relic-fast see torch `OLD_TORCH`; `torch.load` records each call (there must be none) and fails."""
    calls = []

    def load(*args, **kwargs):
        calls.append(args)
        raise AssertionError("torch.load ran on a torch whose weights_only loading is unsafe")

    monkeypatch.setattr(torch, "__version__", OLD_TORCH)
    monkeypatch.setattr(torch, "load", load)
    return calls


def assert_refused_for_old_torch(error: BaseException) -> None:
    """`error` is the one-line known refusal of an unsafe torch (exit code 5), not a checkpoint problem."""
    from relic_fast.errors import classify

    message = str(error)
    assert f"torch {OLD_TORCH}" in message and "CVE-2025-32434" in message and "torch>=2.6" in message, message
    assert "\n" not in message and classify(error) == (ExitCode.CHECKPOINT, "unsafe torch")


def test_an_old_torch_loads_no_checkpoint_it_is_handed(tmp_path, monkeypatch):
    save_checkpoint(small_state(1), tmp_path, 1, keep=3)
    save_checkpoint(small_state(2), tmp_path, 2, keep=3)
    calls = pretend_old_torch(monkeypatch)
    warnings: list[str] = []
    for load in (lambda: read_checkpoint(checkpoint_path(tmp_path, 2)),  # any file handed to us
                 lambda: latest_checkpoint(tmp_path, warn=warnings.append),  # --resume: no fallback either
                 lambda: checkpoint.resolve_checkpoint_file(tmp_path),  # linear-eval / export of a run folder
                 lambda: checkpoint.encoder_from_checkpoint(checkpoint_path(tmp_path, 1))):
        with pytest.raises(Exception) as info:
            load()
        assert_refused_for_old_torch(info.value)
    assert calls == [] and warnings == []


def test_cli_on_an_old_torch_refuses_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from relic_fast.cli import app

    save_checkpoint(small_state(1), tmp_path, 1, keep=3)
    calls = pretend_old_torch(monkeypatch)
    result = CliRunner().invoke(app, ["linear-eval", "--checkpoint", str(tmp_path), "--data", str(tmp_path)])
    output = " ".join(result.output.split())  # the console wraps long lines
    assert result.exit_code == ExitCode.CHECKPOINT and f"unsafe torch: torch {OLD_TORCH}" in output, result.output
    assert "Traceback" not in output and calls == []


def test_pyproject_requires_the_torch_whose_weights_only_loading_is_safe():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    assert "torch>=2.6" in dependencies and "torchvision>=0.21" in dependencies, dependencies
    assert checkpoint.SAFE_TORCH == (2, 6)  # the run-time refusal and the requirement name the same torch


# ---------------------------------------------------------------- unreadable, unreachable and leftover files

def corrupt(path: Path, how: str) -> Path:
    """Damage checkpoint `path` in place as storage or a foreign tool might."""
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "last-bytes-cut":  # torch reports this one as OSError(EINVAL)
        path.write_bytes(data[:-10])
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint" * 64)
    elif how == "not-ours":
        torch.save([1, 2, 3], path)
    elif how == "crafted":
        crafted(path, path.with_name("created-by-unpickling"), as_zip=True)
    return path


@pytest.mark.parametrize("how", ["truncated", "last-bytes-cut", "garbage", "not-ours", "crafted"])
def test_resume_skips_a_file_unreadable_as_a_checkpoint_naming_it(tmp_path, how):
    save_checkpoint(small_state(1), tmp_path, 1, keep=3)
    bad = corrupt(save_checkpoint(small_state(2), tmp_path, 2, keep=3), how)
    warnings: list[str] = []
    path, state = latest_checkpoint(tmp_path, warn=warnings.append)
    assert (path.name, state["step"]) == ("step-000000001.pt", 1)
    assert len(warnings) == 1 and str(bad) in warnings[0] and "falling back" in warnings[0]


@pytest.mark.parametrize("error, words", [
    (PermissionError(13, "Permission denied"), "Permission denied"),
    (OSError(116, "Stale file handle"), "Stale file handle"),
    (MemoryError(), "out of memory"),
], ids=["EACCES", "ESTALE", "MemoryError"])
def test_resume_stops_on_a_file_it_cannot_read_now_instead_of_using_an_older_one(tmp_path, monkeypatch, error, words):
    save_checkpoint(small_state(1), tmp_path, 1, keep=3)
    newest = save_checkpoint(small_state(2), tmp_path, 2, keep=3)
    real_load = torch.load

    def load(path, *args, **kwargs):
        if Path(path) == newest:
            raise error
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    warnings: list[str] = []
    with pytest.raises(CheckpointError) as info:
        latest_checkpoint(tmp_path, warn=warnings.append)
    assert warnings == [], "an intact file that could not be read now was treated as corrupt"
    message = str(info.value)
    assert str(newest) in message and words in message and "\n" not in message, message


def test_retention_counts_only_readable_checkpoints(tmp_path):
    """A corrupt file (skipped by the resume) must not take the place of a good checkpoint, above all not the
    place of the one just written."""
    for step in (1, 2):
        save_checkpoint(small_state(step), tmp_path, step, keep=2)
    newer_corrupt = corrupt(save_checkpoint(small_state(5), tmp_path, 5, keep=9), "truncated")
    # the resume fell back to step 2 and went on; with keep=2 the two newest good ones must stay
    written = save_checkpoint(small_state(3), tmp_path, 3, keep=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-000000002.pt", "step-000000003.pt", newer_corrupt.name], names
    assert read_checkpoint(written)["step"] == 3
    corrupt(written, "garbage")  # an older corrupt file between good ones does not count either
    save_checkpoint(small_state(4), tmp_path, 4, keep=2)
    good = []
    for path in list_checkpoints(tmp_path):
        try:
            good.append(read_checkpoint(path)["step"])
        except CheckpointError:
            pass
    assert good == [2, 4]


def test_retention_never_deletes_the_checkpoint_it_just_wrote(tmp_path):
    save_checkpoint(small_state(4), tmp_path, 4, keep=1)
    corrupt(save_checkpoint(small_state(6), tmp_path, 6, keep=9), "garbage")
    written = save_checkpoint(small_state(5), tmp_path, 5, keep=1)  # resumed from 4, stopped by a signal at 5
    assert written.is_file() and read_checkpoint(written)["step"] == 5
    path, _ = latest_checkpoint(tmp_path, warn=lambda text: None)
    assert path == written


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
    kept = save_checkpoint(small_state(1), tmp_path, 1, keep=3)
    leftovers = [kept.parent / ".tmp-k1ll3d.pt", kept.parent / ".tmp-0ther.pt"]
    for path in leftovers:
        path.write_bytes(b"\0" * 100)
    unrelated = kept.parent / "notes.tmp"
    unrelated.write_text("mine")
    assert sorted(checkpoint.remove_interrupted_writes(tmp_path)) == sorted(leftovers)
    assert sorted(p.name for p in kept.parent.iterdir()) == ["notes.tmp", kept.name]
    assert checkpoint.remove_interrupted_writes(tmp_path / "no-such-run") == []
