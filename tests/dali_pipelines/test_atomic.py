"""`dali_pipelines.atomic`: the one temporary-file-then-rename writer, and the folder swap, every writer uses."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dali_pipelines import atomic
from dali_pipelines.atomic import TEMPORARY_PREFIX, replace_folder, staged_file, write_atomically
from dali_pipelines.formats.shard_index import write_wds_index
from dali_pipelines.formats.shards import ShardRecord, write_shard_classes, write_shard_manifest


def leftovers(folder: Path) -> list[str]:
    """Temporary files of interrupted or failed writes in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMPORARY_PREFIX))


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail_half_way(handle) -> None:
        handle.write(b"new, but cut")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail_half_way)
    assert target.read_text() == "old" and leftovers(tmp_path) == []
    write_atomically(target, lambda handle: handle.write(b"new"))
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_two_writers_of_one_target_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "step-000000001.pt"
    with staged_file(target, lambda handle: handle.write(b"first")) as first, \
            staged_file(target, lambda handle: handle.write(b"second")) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert first.name.startswith(TEMPORARY_PREFIX) and first.suffix == ".pt"  # what a cut write leaves
        assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")
        os.replace(second, target)
    assert target.read_bytes() == b"second" and leftovers(tmp_path) == []


def test_fsync_is_skipped_only_when_asked(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd))
    write_atomically(tmp_path / "a", lambda handle: handle.write(b"a"))
    write_atomically(tmp_path / "b", lambda handle: handle.write(b"b"), fsync=False)
    assert len(synced) == 1 and (tmp_path / "b").read_bytes() == b"b"


def write_mask_file(target: Path) -> None:
    """`relic-fast masks`' writer of one mask."""
    from relic_fast.dataset_tools.masks import write_mask

    write_mask(np.ones((2, 3), bool), target)


def write_index_of_an_empty_tar(target: Path) -> None:
    """The WebDataset index writer (the readers' and `relic-fast pack`'s), on an empty tar beside `target`."""
    with tarfile.open(target.with_suffix(".tar"), "w"):
        pass
    write_wds_index(target.with_suffix(".tar"), target)


WRITERS = {  # writer of one file, and the name it writes in its folder
    "mask": (write_mask_file, "x.png"),
    "classes": (lambda target: write_shard_classes(target.parent, ["a", "b"]), "classes.json"),
    "manifest": (lambda target: write_shard_manifest(target.parent, [ShardRecord("s.tar", 1, 2, 3, "h", "s.idx", 4,
                                                                                 5, "i")]), "manifest.json"),
    "index": (write_index_of_an_empty_tar, "s.idx"),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_no_writer_writes_through_a_file_planted_at_a_fixed_temporary_name(tmp_path, writer):
    """These writers used a fixed temporary name (`.<name>.tmp`): two writers at once wrote into one file, and
    a symlink planted under that name was written through. Now each write gets a fresh name."""
    write, name = WRITERS[writer]
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    (tmp_path / f".{name}.tmp").symlink_to(victim)
    write(tmp_path / name)
    assert victim.read_text() == "not yours"
    assert (tmp_path / name).is_file() and not (tmp_path / name).is_symlink()
    assert leftovers(tmp_path) == []


def test_replace_folder_swaps_a_whole_folder_and_puts_the_old_one_back_on_failure(tmp_path, monkeypatch):
    target, staging = tmp_path / "out", tmp_path / ".out.new"
    staging.mkdir()
    (staging / "a").write_text("1")
    replace_folder(staging, target)  # absent: one rename
    assert (target / "a").read_text() == "1" and not staging.exists()

    staging.mkdir()
    (staging / "b").write_text("2")
    real_rename, calls = os.rename, []

    def second_rename_fails(source, destination):
        calls.append(source)
        if len(calls) == 3:  # the try, the old folder aside, then staging into place
            raise OSError("interrupted")
        real_rename(source, destination)

    monkeypatch.setattr(atomic.os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="interrupted"):
        replace_folder(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["a"]  # the old set, back in place
    monkeypatch.setattr(atomic.os, "rename", real_rename)
    replace_folder(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing of the old folder left
