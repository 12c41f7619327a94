"""A folder tree `root/<class>/<image>`: the class index from the sorted class-folder names; images may sit
deeper inside a class folder. Any folder that no other format claims is read as one.
"""

from __future__ import annotations

import os
from pathlib import Path

from dali_pipelines.formats.base import IMAGE_SUFFIXES, DatasetError, DatasetSpec, resolve_masks
from dali_pipelines.formats.image_files import ImageFiles


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class FolderTree(ImageFiles):
    """`root/<class>/<image>`."""

    name = "folder"
    description = "a folder tree"

    def detects(self, path: Path, entries: list[os.DirEntry] | None) -> bool:
        return entries is not None

    def resolve(self, path: Path, *, masks: str, labels: str) -> DatasetSpec:
        if not path.is_dir():
            raise DatasetError(f"{path} is not a folder (format 'folder')")
        classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        files, indices = [], []
        for index, name in enumerate(classes):
            found = sorted(p.relative_to(path).as_posix() for p in (path / name).rglob("*") if _is_image(p))
            files += found
            indices += [index] * len(found)
        if not files:
            raise DatasetError(f"{path}: no images found in class folders (expected root/<class>/<image>)")
        return DatasetSpec(self, path, files, indices, [], resolve_masks(path, masks), classes, len(files),
                           [str(path / name) for name in classes])
