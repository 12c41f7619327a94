"""`relic-fast index` loses no image: every name the folder reader accepts (`#`, quotes, spaces at either end,
tabs, line breaks) comes back from the written list, class names too, and a name a list cannot hold (not
valid UTF-8) is named, counted and skipped, leaving no temporary file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from dali_pipelines.atomic import TEMPORARY_PREFIX
from dali_pipelines.dataset import DatasetError, resolve_dataset
from dali_pipelines.formats.file_list import file_list_text
from relic_fast.dataset_tools.index import index_dataset, summary_rows

from tests.relic_fast.dataset_tools.test_dataset_index import decode_with_dali

ODD_CLASSES = ["#x", " cat", "dog "]
ODD_FILES = ["a b.jpg", "#h.jpg", '"q".jpg', " lead.jpg", "tab\tx.jpg", "nl\nx.jpg", "back\\slash.jpg",
             "nbsp\u00a0x.jpg", "sep\u2028x.jpg", "caf\u00e9 1 2.jpg"]


def write_jpeg(path: Path) -> None:
    """A tiny valid JPEG at `path` (any name, bytes paths included)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (200, 40, 40)).save(path, format="JPEG")


def odd_tree(root: Path) -> Path:
    """Class folders and files whose names a naive `path label` list would mangle."""
    for name in ODD_CLASSES:
        for file in ODD_FILES:
            write_jpeg(root / name / file)
    return root


def test_index_round_trips_names_that_look_like_comments_quotes_or_padding(tmp_path):
    root = odd_tree(tmp_path / "data")
    folder = resolve_dataset(str(root))
    assert folder.class_names == sorted(ODD_CLASSES)
    report = index_dataset(root, workers=1)
    assert report.kept == len(ODD_CLASSES) * len(ODD_FILES)
    listed = resolve_dataset(str(report.index_path))
    assert (listed.files, listed.labels, listed.class_names) == (folder.files, folder.labels, folder.class_names)
    assert [name for name in os.listdir(root) if name.startswith(TEMPORARY_PREFIX)] == []  # no write left behind
    assert all(image.shape == (8, 8, 3) for image in decode_with_dali(report.index_path, len(listed.files)))


def test_file_list_text_round_trips_odd_paths_and_class_names(tmp_path):
    paths = [f"{c}/{f}" for c in ["#y", '"z"'] for f in ODD_FILES] + ['"quoted".jpg', "trailing.jpg "]
    names = ["#x", " cat", "dog ", '"q"', "t\tab"]
    listing = tmp_path / "list.txt"
    listing.write_text(file_list_text(paths, [i % len(names) for i in range(len(paths))], names), encoding="utf-8")
    spec = resolve_dataset(str(listing))
    assert (spec.files, spec.class_names) == (paths, names)


def test_a_name_that_is_not_utf8_is_named_counted_and_skipped(tmp_path):
    root = tmp_path / "data"
    write_jpeg(root / "cat" / "ok.jpg")
    write_jpeg(Path(os.fsdecode(os.fsencode(root / "cat") + b"/caf\xe9.jpg")))
    report = index_dataset(root, workers=1)
    assert resolve_dataset(str(report.index_path)).files == ["cat/ok.jpg"]
    rows = dict(summary_rows(report))
    assert rows["skipped: name not valid UTF-8"] == "1, e.g. cat/caf\\xe9.jpg"
    assert sorted(os.listdir(root)) == [".relic-fast-index-cache.json", "cat", "index.rejected.tsv", "index.txt"]
    assert "caf\\xe9.jpg\tunwritable name: not valid UTF-8" in report.rejected_path.read_text(encoding="utf-8")


def test_a_class_folder_that_is_not_utf8_stops_index_naming_it(tmp_path):
    root = tmp_path / "data"
    write_jpeg(root / "cat" / "ok.jpg")
    write_jpeg(Path(os.fsdecode(os.fsencode(root) + b"/d\xf6g/a.jpg")))
    with pytest.raises(DatasetError, match=r"class folder 'd\\xf6g'.* not valid UTF-8"):
        index_dataset(root, workers=1)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".relic")) == ["cat", os.fsdecode(b"d\xf6g")]
