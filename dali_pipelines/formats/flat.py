"""A flat folder of images with a labels file: ImageNet's validation set as Kaggle ships it,
`.../CLS-LOC/val/ILSVRC2012_val_00000001.JPEG ...`, labelled by `LOC_val_solution.csv` at the download's root.

The labels file is the one given (`labels=`: `--val-labels`, `data.val_labels`), else
`LOC_<folder name>_solution.csv` in the folder or up to `LABELS_LOOKUP_DEPTH` folders above it. It is a CSV
with a header row, then `image,class ...` rows: the image's file name with or without its suffix, the class the
first word of the second column (Kaggle's `ImageId,PredictionString`). Class order: `LOC_synset_mapping.txt`
beside the CSV when present (first word of each line), else the sorted class names. Every image needs exactly
one row and every row an image. Read like a file list (root, relative files, labels). Without a labels file
the images are unlabelled (label -1): fine for pretraining, refused as an evaluation split.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from dali_pipelines.formats.base import DatasetError, DatasetSpec, is_image_entry, resolve_masks
from dali_pipelines.formats.image_files import ImageFiles

LABELS_FILE_PATTERN = "LOC_{folder}_solution.csv"
"""Labels file of a flat folder, looked up by the folder's name (Kaggle's `LOC_val_solution.csv`)."""

LABELS_LOOKUP_DEPTH = 4
"""Folders above a flat folder searched for its labels file: `.../ILSVRC/Data/CLS-LOC/val` reaches the
Kaggle download's root, which holds `LOC_val_solution.csv`."""

SYNSET_MAPPING = "LOC_synset_mapping.txt"
"""Beside a labels CSV: the class order (`<wnid> <description>` per line; Kaggle's ImageNet download)."""


class FlatFolder(ImageFiles):
    """Images directly in a folder (no subfolder), labelled by a labels CSV (module docstring)."""

    name = "flat"
    description = "a flat folder"

    def detects(self, path: Path, entries: list[os.DirEntry] | None) -> bool:
        return (entries is not None and not any(e.is_dir() and not e.name.startswith(".") for e in entries)
                and any(map(is_image_entry, entries)))

    def resolve(self, path: Path, *, masks: str, labels: str) -> DatasetSpec:
        """The images, labelled by the labels CSV (`labels`, else found by `find_labels_file`); unlabelled
        (label -1, no class names) when there is none."""
        files = _flat_images(path)
        if not files:
            raise DatasetError(f"{path}: no images found")
        mask_root = resolve_masks(path, masks)
        labels_file = Path(labels).expanduser() if labels else find_labels_file(path)
        if labels_file is None:
            return DatasetSpec(self, path, files, [-1] * len(files), [], mask_root, [], len(files))
        if not labels_file.is_file():
            raise DatasetError(f"labels file {labels_file} does not exist")
        indices, names, sources = _labelled(path, files, labels_file)
        return DatasetSpec(self, path, files, indices, [], mask_root, names, len(files), sources)

    def unlabelled_reason(self, spec: DatasetSpec, *, brief: bool = False) -> str:
        name = LABELS_FILE_PATTERN.format(folder=spec.root.name)
        if brief:
            return f"no labels file ({name} not found)"
        return (f"a flat folder without a labels file (no {name} in it or the {LABELS_LOOKUP_DEPTH} folders "
                f"above it); name one with --val-labels FILE (data.val_labels)")

    def has_labels(self, path: Path, labels: str) -> bool:
        """Only with a labels file: the one asked for, or one found by looking up."""
        return bool(labels) or find_labels_file(path) is not None


def _labelled(root: Path, files: list[str], labels_file: Path) -> tuple[list[int], list[str], list[str]]:
    """(class index of each of `files`, class names, where each class is declared) from `labels_file`: every
    image needs exactly one row and every row an image."""
    rows = read_labels_csv(labels_file)
    by_name: dict[str, str] = {}
    for name in files:
        by_name.setdefault(name, name)
        by_name.setdefault(Path(name).stem, name)
    label_of: dict[str, tuple[str, int]] = {}
    for row, image, name in rows:
        file = by_name.get(image)
        if file is None:
            raise DatasetError(f"{labels_file}:{row}: image {image!r} is not in {root}")
        if file in label_of:
            raise DatasetError(f"{labels_file}:{row}: image {image!r} already has a label (row {label_of[file][1]})")
        label_of[file] = (name, row)
    unlabelled = [name for name in files if name not in label_of]
    if unlabelled:
        raise DatasetError(f"{root / unlabelled[0]}: no row in {labels_file} "
                           f"({len(unlabelled)} of the folder's {len(files)} images have none)")
    names, sources = _class_order(labels_file, rows)
    index = {name: i for i, name in enumerate(names)}
    return [index[label_of[f][0]] for f in files], names, sources


def _flat_images(root: Path) -> list[str]:
    """Names of the images directly inside `root`, sorted."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if is_image_entry(entry))


def find_labels_file(folder: Path) -> Path | None:
    """`LOC_<folder name>_solution.csv` in `folder` or up to `LABELS_LOOKUP_DEPTH` folders above it (the
    nearest wins), or None."""
    folder = Path(folder).expanduser().resolve()
    name = LABELS_FILE_PATTERN.format(folder=folder.name)
    for place in [folder, *folder.parents][:LABELS_LOOKUP_DEPTH + 1]:
        if (place / name).is_file():
            return place / name
    return None


def read_labels_csv(path: Path) -> list[tuple[int, str, str]]:
    """(row number, image, class) of every row of a labels CSV: a header row, then `image,class ...` rows
    (the class is the first word of the second column: Kaggle's `ImageId,PredictionString`)."""
    rows: list[tuple[int, str, str]] = []
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None or len(header) < 2:
                raise DatasetError(f"{path}:1: expected a header row such as 'ImageId,PredictionString', "
                                   f"got {','.join(header or [])!r}")
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                words = cells[1].split() if len(cells) >= 2 else []
                if not cells[0].strip() or not words:
                    raise DatasetError(f"{path}:{reader.line_num}: expected 'image,class ...' (e.g. "
                                       f"'ILSVRC2012_val_00000001,n01751748 ...'), got {','.join(cells)!r}")
                rows.append((reader.line_num, cells[0].strip(), words[0]))
    except csv.Error as err:
        raise DatasetError(f"{path}: not a readable CSV: {err}") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not a text CSV ({err.reason} at byte {err.start})") from None
    if not rows:
        raise DatasetError(f"{path}: the labels file has no rows")
    return rows


def _class_order(labels_file: Path, rows: list[tuple[int, str, str]]) -> tuple[list[str], list[str]]:
    """(class names, where each is declared) of a labels CSV: `LOC_synset_mapping.txt`'s order when it lies
    beside the CSV (a class of the CSV it lacks is an error), else the sorted classes of the CSV. A class
    the CSV uses is declared at its first row."""
    first_row: dict[str, int] = {}
    for row, _, name in rows:
        first_row.setdefault(name, row)
    mapping = labels_file.parent / SYNSET_MAPPING
    if not mapping.is_file():
        names = sorted(first_row)
        return names, [f"{labels_file}:{first_row[n]}" for n in names]
    names, sources = [], []
    for number, line in enumerate(mapping.read_text().splitlines(), start=1):
        if line.strip():
            names.append(line.split()[0])
            sources.append(f"{mapping}:{number}")
    known = set(names)
    for name, row in first_row.items():
        if name not in known:
            raise DatasetError(f"{labels_file}:{row}: class {name!r} is not in {mapping}")
    return names, [f"{labels_file}:{first_row[n]}" if n in first_row else s for n, s in zip(names, sources)]

