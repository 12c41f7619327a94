"""The registered dataset formats, and the choice of one for a path (`detect`) or a name (`format_named`).

Adding a format: its class in a module of this package (a `DatasetFormat`, or an `ImageFiles` when its samples
are image files), and one entry in `FORMATS`.
"""

from __future__ import annotations

import os
from pathlib import Path

from dali_pipelines.formats.base import DatasetError, DatasetFormat
from dali_pipelines.formats.file_list import FileList
from dali_pipelines.formats.flat import FlatFolder
from dali_pipelines.formats.folder import FolderTree
from dali_pipelines.formats.webdataset import WebDataset

FORMATS: tuple[DatasetFormat, ...] = (
    WebDataset(),
    FileList(),
    FlatFolder(),
    FolderTree(),  # takes any folder: last
)
"""Every dataset format, in the order `detect` asks them."""


def detect(path: Path) -> DatasetFormat:
    """The format of `path`: the first of `FORMATS` that `detects` it (one listing of a folder shared by all)."""
    entries = None
    if not path.is_file():
        with os.scandir(path) as scan:
            entries = list(scan)
    found = next((f for f in FORMATS if f.detects(path, entries)), None)
    if found is None:
        raise DatasetError(f"{path}: not a dataset of any format ({', '.join(f.name for f in FORMATS)})")
    return found


def format_named(name: str) -> DatasetFormat:
    """The format called `name` (`data.format`); a `DatasetError` naming the choices for another name."""
    for dataset_format in FORMATS:
        if dataset_format.name == name:
            return dataset_format
    raise DatasetError(f"unknown dataset format {name!r} (expected auto, "
                       f"{', '.join(f.name for f in FORMATS)})")
