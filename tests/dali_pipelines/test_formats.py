"""Dataset formats: one class each, registered once; nothing outside `dali_pipelines/formats/` asks which format
a dataset is; the mask table of a dataset is built once and shared by the start-up check and the loader."""

from __future__ import annotations

import re

import pytest

from dali_pipelines.dataset import DatasetError, resolve_dataset
from dali_pipelines.formats.image_files import ImageFiles
from dali_pipelines.formats.registry import FORMATS, detect, format_named
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.recipe import DataConfig, ViewsConfig
from relic_fast.config import load_config

from tests.support import REPO


def test_each_format_is_registered_once_and_found_by_its_name():
    names = [f.name for f in FORMATS]
    assert len(set(names)) == len(names) and "" not in names
    assert all(format_named(name).name == name for name in names)
    with pytest.raises(DatasetError, match=r"unknown dataset format 'lmdb' \(expected auto, .*folder"):
        format_named("lmdb")


@pytest.mark.parametrize("name", [f.name for f in FORMATS])
def test_every_registered_format_is_a_data_format_choice(name):
    """`data.format` accepts each registered format by name (the choices come from the registry)."""
    assert load_config(None, [f"data.format={name}"]).data.format == name


def test_each_layout_is_detected_as_its_format(identity_data, tmp_path):
    assert detect(identity_data.folder).name == "folder"
    assert detect(identity_data.file_list).name == "file_list"
    assert detect(identity_data.shards).name == "webdataset"
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(next(identity_data.folder.rglob("*.png")).read_bytes())
    assert detect(flat).name == "flat"
    assert FORMATS[-1].name == "folder"  # takes any folder, so it is asked last


def test_nothing_outside_the_formats_asks_which_format():
    """A format's behaviour lives in its class: code elsewhere reads its capabilities, never its name."""
    asks = re.compile(r"\.kind\b|format\.name\s*(==|!=|in\b)|isinstance\([^)]*,\s*(FolderTree|FileList|FlatFolder|"
                      r"WebDataset|ImageFiles)\b")
    found = [f"{path.relative_to(REPO)}:{number}" for package in ("dali_pipelines", "relic_fast")
             for path in sorted((REPO / package).rglob("*.py")) if "formats" not in path.parts
             for number, line in enumerate(path.read_text().splitlines(), start=1) if asks.search(line)]
    assert found == []


def test_the_mask_table_is_built_once(identity_data, monkeypatch):
    calls = []
    build = ImageFiles.mask_table
    monkeypatch.setattr(ImageFiles, "mask_table", lambda self, spec: calls.append(spec) or build(self, spec))
    dataset = resolve_dataset(str(identity_data.folder))
    coverage = dataset.mask_coverage()  # what the start-up check counts
    views = ViewsConfig(num_large=1, num_small=0, large_size=8, saliency_p=0.5)
    loader = build_pretrain_loader(dataset, views, DataConfig(num_threads=1), batch_size=4, seed=0)
    next(iter(loader))
    assert len(calls) == 1 and 0 < coverage.with_mask < coverage.images
