"""A file larger than the byte cap is rejected from its size alone, never read into memory: `check_image`
(the loader's and the trainer's check), `validate_files` (`index`, `pack`, `data.on_bad_file = "skip"`) and
`relic-fast index --max-image-mb`. Sparse files make the big ones without taking disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.image_check import DEFAULT_MAX_IMAGE_MB, check_image
from dali_pipelines.validate import filter_bad_files
from relic_fast.cli import app


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes named like an image, holding no disk blocks (all zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def test_a_file_over_the_default_cap_is_rejected_with_its_size(tmp_path, monkeypatch):
    big = sparse(tmp_path / "x.jpg", 300 * 2**20)
    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(AssertionError("read it all")))
    assert check_image(big).reason == f"too large: file of 300 MB exceeds the {DEFAULT_MAX_IMAGE_MB:g} MB cap"
    monkeypatch.undo()
    small = sparse(tmp_path / "y.jpg", 2 * 2**20)
    assert check_image(small, max_image_mb=1).reason == "too large: file of 2 MB exceeds the 1 MB cap"
    assert check_image(small, max_image_mb=3).reason == "not an image: unrecognized content"  # under the cap: read


def test_the_trainer_skip_path_drops_an_oversized_file(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "ok.jpg")
    sparse(tmp_path / "cat" / "huge.jpg", 300 * 2**20)
    clean, rejected = filter_bad_files(resolve_dataset(str(tmp_path)), workers=1)
    assert clean.files == ["cat/ok.jpg"]
    assert rejected == [("cat/huge.jpg", f"too large: file of 300 MB exceeds the {DEFAULT_MAX_IMAGE_MB:g} MB cap")]


def test_index_max_image_mb_sets_the_cap(tmp_path):
    (tmp_path / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "ok.jpg")
    sparse(tmp_path / "cat" / "big.jpg", 3 * 2**20 + 1)
    result = CliRunner().invoke(app, ["index", str(tmp_path), "--max-image-mb", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "index.rejected.tsv").read_text() == "cat/big.jpg\ttoo large: file of 3.1 MB exceeds the 2 MB cap\n"
    assert resolve_dataset(str(tmp_path / "index.txt")).files == ["cat/ok.jpg"]


def test_the_skip_path_cap_is_a_data_setting():
    """`data.max_image_mb` sets the cap of the trainer's `on_bad_file = "skip"` path; the default is index's."""
    from relic_fast.config import ConfigError, load_config

    assert load_config(None, []).data.max_image_mb == DEFAULT_MAX_IMAGE_MB
    assert load_config(None, ["data.max_image_mb=2"]).data.max_image_mb == 2
    with pytest.raises(ConfigError, match="'data.max_image_mb'"):
        load_config(None, ["data.max_image_mb=0"])
