"""Files the readers write for DALI (placeholder mask, WebDataset indexes) live in a private folder, and a
`.idx` beside its tar is used only while it still matches the tar."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dali_pipelines.formats.shard_index import wds_index, write_wds_index
from dali_pipelines.private_cache import placeholder_mask
from relic_fast.dataset_tools.pack import pack_dataset


@pytest.fixture()
def shared_tmp(tmp_path, monkeypatch) -> Path:
    """A stand-in for the machine's shared /tmp (the old fixed paths lived there) and a private cache home."""
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return shared


def jpeg_bytes(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def assert_private(path: Path) -> None:
    """`path` lies in a folder only this user can write to."""
    info = path.parent.stat()
    assert info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & 0o077, path.parent


def test_placeholder_planted_at_the_old_fixed_path_is_not_used(shared_tmp):
    planted = shared_tmp / "relic-fast-placeholder-mask.png"
    planted.write_bytes(b"planted by another user")
    path = placeholder_mask()
    assert path != planted
    assert np.array_equal(np.asarray(Image.open(path)), np.full((1, 1), 255, np.uint8))
    assert_private(path)


def test_index_planted_at_the_old_fixed_path_is_not_used(shared_tmp, tmp_path):
    tar_path = tmp_path / "third-party.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, data in (("k1.jpg", jpeg_bytes(10)), ("k1.cls", b"1"), ("k2.jpg", jpeg_bytes(20))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    info = tar_path.stat()
    digest = hashlib.sha1(f"{tar_path.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()).hexdigest()[:20]
    planted = shared_tmp / "relic-fast-wds-index" / f"{digest}.idx"
    planted.parent.mkdir()
    planted.write_text("v1.2 1\njpg 0 999999 /etc/passwd\n")
    path = wds_index(tar_path)
    assert path != planted
    write_wds_index(tar_path, tmp_path / "expected.idx")
    assert path.read_text() == (tmp_path / "expected.idx").read_text()
    assert_private(path)


def test_index_beside_a_rewritten_tar_is_not_used(shared_tmp, tmp_path):
    root = tmp_path / "data"
    for i in range(4):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / f"{i}.jpg").write_bytes(jpeg_bytes(40 * i))
    first = pack_dataset(root, tmp_path / "first", shard_size=4, seed=1, workers=1).shards[0]
    other = pack_dataset(root, tmp_path / "other", shard_size=4, seed=2, workers=1).shards[0]
    beside = first.with_suffix(".idx")
    assert wds_index(first) == beside  # pack's own index, still matching: used as it is
    stale = beside.read_text()
    shutil.copyfile(other, first)  # the tar rewritten (other sample order), its old index left beside it
    with pytest.warns(UserWarning, match=r"shard-000000\.idx") as caught:
        path = wds_index(first)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert path != beside and beside.read_text() == stale
    assert path.read_text() == other.with_suffix(".idx").read_text() != stale
    assert_private(path)
