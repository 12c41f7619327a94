"""What a dataset path holds: `resolve_dataset` turns a folder tree, a file list, a flat folder with its
labels file or WebDataset shards into a `DatasetSpec`; `resolve_split` reads an evaluation split with the
train split's class indices (matched by class NAME); `find_monitor_split` finds the split the pretraining
monitor scores.

The spec is plain data (paths, labels, class names, counts) that the readers turn into DALI readers and
that tools (`relic-fast index`, `pack`) inspect. Each layout is read in one place below:
- folder tree `root/<class>/<image>`: class index from the sorted class-folder names;
- file list (`.txt`): `relative/path label` per line, paths relative to the list's folder. Version 2,
  what `relic-fast index` writes, opens with a header naming the format and the classes:
      #relic-fast file-list 2
      #class 0 n01440764
      #class 1 n01443537
      n01440764/n01440764_10026.JPEG 0
  The first line names the version; `#class <index> <name>` lines follow it in index order (the name is
  the rest of the line after the one space that follows the index, so it may hold spaces). Quoting
  (version 2): a path or class name that is empty, starts with `#`, `"` or a space, ends with a space, or
  holds any character `str.isprintable` rejects (tab, line break, a non-ASCII space, a control
  character) is written as a JSON string literal, ASCII only (`json.dumps`): `"#x/ a.jpg" 0`,
  `#class 0 " cat"`; every other name is written as it is. So every name the folder reader accepts comes
  back unchanged; a name that is not valid UTF-8 cannot be written (`relic-fast index` names, counts
  and skips such files). A list without the header (version 1) still reads, unquoted, its classes named
  "0".."N-1"; in either version any other `#` line is a comment and blank lines are skipped. A relative
  path that climbs out of the list's folder (`../imgs/a.jpg`) is read as the absolute path it names,
  normalized as `os.path.normpath` does. (DALI's own `file_list=` argument does not skip `#` lines;
  relic-fast's readers pass the files themselves.)
- flat folder of images with a labels file: ImageNet's validation set as Kaggle ships it,
  `.../CLS-LOC/val/ILSVRC2012_val_00000001.JPEG ...`, labelled by `LOC_val_solution.csv` at the
  download's root. The labels file is the one given (`labels=`: `--val-labels`, `data.val_labels`), else
  `LOC_<folder name>_solution.csv` in the folder or up to `LABELS_LOOKUP_DEPTH` folders above it. It is a
  CSV with a header row, then `image,class ...` rows: the image's file name with or without its suffix,
  the class the first word of the second column (Kaggle's `ImageId,PredictionString`). Class order:
  `LOC_synset_mapping.txt` beside the CSV when present (first word of each line), else the sorted class
  names. Every image needs exactly one row and every row an image. Read like a file list (root,
  relative files, labels). Without a labels file the images are unlabelled (label -1): fine for
  pretraining, refused as an evaluation split.
- WebDataset: a folder of `.tar` shards (or one `.tar`), samples `<key>.jpg|.jpeg|.png`, optional
  `<key>.cls` (ASCII label) and `<key>.mask.png` (saliency mask). The class names are in
  `classes.json` beside the shards (`relic-fast pack` writes it: `{"format": "relic-fast classes",
  "version": 1, "classes": [...]}`); shards without it name their classes "0".."N-1". `relic-fast pack`
  also writes `manifest.json` (`write_shard_manifest`: each shard's name, samples, bytes, mtime and
  SHA-256, and its `.idx`'s), checked at every resolve (`check_shard_manifest`: a shard missing, one
  not listed, or a size or sample count that differs is a `DatasetError` naming the shard). A folder
  without a manifest is read unchecked with one warning (third-party shards), unless its `classes.json`
  says `relic-fast pack` wrote it: then the manifest was lost and the set is refused.
A demo-data root (a folder holding `train/`) resolves to its `train/` split. Saliency masks of folder,
file-list and flat datasets live in a parallel tree (`mask_file`, the one rule the readers and
`relic-fast masks` share): `<mask_root>/<relative image path, normalized, suffix .png>`, and for an
absolute entry (what `relic-fast index --out elsewhere` writes, or a `..` entry made absolute)
`<mask_root>/_abs/<absolute image path without its leading />, suffix .png>`. The rule reads the entry,
not the disk, so a mask never lands outside the mask root and symlinks in the image tree move no mask; the
mask root may not be the dataset folder itself (the mask of a PNG image would be the image). By default
the mask root is `<root>/../masks/<root name>` when that folder exists (the demo-data layout).

Class subsets (`data.classes`): a file of class names, one per line (blank and `#` lines skipped), or the
name of a list shipped in `class_lists/` (`imagenet100`: CMC's ImageNet-100, the list solo-learn uses).
`resolve_dataset(..., classes=)` keeps those classes of the train split (in the split's own order,
re-indexed 0..K-1; a listed class the split lacks is an error); `resolve_split(..., classes=)` drops the
other classes' samples of an evaluation split. Every disagreement is a `DatasetError` naming the file
and row (the CLI: one line, exit code 3).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import posixpath
import re
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dali_pipelines.atomic import write_text_atomically

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""File suffixes (lower case) the folder reader treats as images (DALI's decoder reads them all)."""

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
"""Extensions of the image member of a WebDataset sample."""

WDS_LABEL_EXTENSION = "cls"
WDS_MASK_EXTENSION = "mask.png"

WDS_CLASSES_FILE = "classes.json"
"""Beside the shards: the shard set's class names (`write_shard_classes`)."""

WDS_CLASSES_FORMAT = "relic-fast classes"
"""The `format` of a `classes.json` that `relic-fast pack` wrote (which tells its manifest was lost)."""

WDS_MANIFEST_FILE = "manifest.json"
"""Beside the shards `relic-fast pack` wrote: what the set holds (`write_shard_manifest`)."""

WDS_MANIFEST_FORMAT = "relic-fast shards"
WDS_MANIFEST_VERSION = 1
"""The manifest version this module writes (and the newest it reads)."""

FILE_LIST_HEADER = "#relic-fast file-list"
"""First line of a versioned file list, followed by the version number."""

FILE_LIST_VERSION = 2
"""The file-list version this module writes (and the newest it reads)."""

_CLASS_LINE = re.compile(r"#class (\d+) (.+)")
_JSON_DECODER = json.JSONDecoder()

MASKS_OUTSIDE_ROOT = "_abs"
"""Folder of a mask tree holding the masks of absolute entries: `<mask_root>/_abs/<path without its
leading />` (`mask_file`)."""

LABELS_FILE_PATTERN = "LOC_{folder}_solution.csv"
"""Labels file of a flat folder, looked up by the folder's name (Kaggle's `LOC_val_solution.csv`)."""

LABELS_LOOKUP_DEPTH = 4
"""Folders above a flat folder searched for its labels file: `.../ILSVRC/Data/CLS-LOC/val` reaches the
Kaggle download's root, which holds `LOC_val_solution.csv`."""

SYNSET_MAPPING = "LOC_synset_mapping.txt"
"""Beside a labels CSV: the class order (`<wnid> <description>` per line; Kaggle's ImageNet download)."""

CLASS_LISTS_DIR = Path(__file__).resolve().parent / "class_lists"
BUILTIN_CLASS_LISTS = {"imagenet100": "imagenet100.txt"}
"""`data.classes` names of the class lists shipped in `class_lists/`: `imagenet100` is CMC's ImageNet-100
(Tian et al., 2019; the same 100 wnids solo-learn ships as `imagenet100_classes.txt`)."""


class DatasetError(ValueError):
    """A dataset path that does not exist or holds no images, a malformed file list, labels file or class
    list, or a split whose classes disagree with the train split's; the message names the file and row."""


@dataclass(frozen=True)
class DatasetSpec:
    """A resolved dataset: enough to build readers and to list (and validate) its samples."""

    kind: str
    """"folder", "file_list" (root + relative files + labels: file lists and flat folders) or "webdataset"."""
    root: Path
    """Folder the relative image paths start from (for webdataset: the folder of the shards)."""
    files: list[str] = field(default_factory=list)
    """Relative image paths, in reader order (empty for webdataset)."""
    labels: list[int] = field(default_factory=list)
    """Class index per sample (-1 when unknown, e.g. a WebDataset sample without `.cls`)."""
    tar_paths: list[Path] = field(default_factory=list)
    """WebDataset shards, sorted by name."""
    mask_root: Path | None = None
    """Root of the saliency-mask tree (folder/file-list datasets); None: no masks."""
    class_names: list[str] = field(default_factory=list)
    """Name of each class index (folder names, a list's `#class` lines, a labels CSV's classes, a shard
    set's `classes.json`; "0".."N-1" where the source names none); empty: unlabelled."""
    num_samples: int = 0
    """Number of samples (images)."""
    class_sources: list[str] = field(default_factory=list)
    """Where each class is declared (`file:row` or the class folder), for messages; may be empty."""


def mask_file(mask_root: Path, image: str) -> Path:
    """Where the saliency mask of the dataset entry `image` lives: the one rule the readers and
    `relic-fast masks` share (module docstring), so a mask is found where it was written.

    A relative entry (relative to the dataset folder) maps to `<mask_root>/<entry>`, an absolute one to
    `<mask_root>/_abs/<entry without its leading />`, both normalized (`.`, `..`, doubled slashes) and with
    the suffix `.png`. The rule reads the entry, never the disk: symlinks in the image tree move no mask,
    and the result always lies inside `mask_root`. A relative entry that climbs out of the dataset folder
    (`../x.jpg`) has no place there and is a `DatasetError` (the file-list reader makes such entries
    absolute)."""
    key = posixpath.normpath(os.fspath(image))
    if key.startswith("/"):
        key = f"{MASKS_OUTSIDE_ROOT}/{key.lstrip('/')}"
    if key in (".", "..", f"{MASKS_OUTSIDE_ROOT}/") or key.startswith("../"):
        raise DatasetError(f"image path {image!r} climbs out of its dataset folder: it has no place in a mask "
                           f"tree (write it as an absolute path)")
    return Path(mask_root) / Path(key).with_suffix(".png")


def check_mask_root(mask_root: Path, root: Path) -> None:
    """Refuse a mask folder that is the dataset folder itself (symlinks followed): there the mask of a PNG
    image would be the image, read as its own mask or taken for a mask "already there"."""
    if os.path.realpath(mask_root) == os.path.realpath(root):
        raise DatasetError(f"mask folder {mask_root} is the dataset folder {root}: masks need a folder of their "
                           f"own (e.g. {Path(root).parent / 'masks' / Path(root).name})")


def _default_mask_root(root: Path) -> Path | None:
    """`<root>/../masks/<root name>` when it exists (demo-data layout), else None."""
    candidate = root.parent / "masks" / root.name
    return candidate if candidate.is_dir() else None


def _resolve_masks(root: Path, masks: str) -> Path | None:
    """The explicit mask root (which must exist), or the default one; never the dataset folder itself
    (`check_mask_root`)."""
    if masks:
        path = Path(masks).expanduser()
        if not path.is_dir():
            raise DatasetError(f"saliency mask folder {path} does not exist")
    else:
        path = _default_mask_root(root)
    if path is not None:
        check_mask_root(path, root)
    return path


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _folder(root: Path, masks: str) -> DatasetSpec:
    """A `root/<class>/<image>` tree; images may sit deeper inside a class folder."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for index, name in enumerate(classes):
        found = sorted(p.relative_to(root).as_posix() for p in (root / name).rglob("*") if _is_image(p))
        files += found
        labels += [index] * len(found)
    if not files:
        raise DatasetError(f"{root}: no images found in class folders (expected root/<class>/<image>)")
    return DatasetSpec("folder", root, files, labels, [], _resolve_masks(root, masks), classes, len(files),
                       [str(root / name) for name in classes])


def _numbered_names(labels: list[int]) -> list[str]:
    """Class names "0".."N-1" of a source that names none (N: the largest label + 1; none when unlabelled)."""
    top = max(labels, default=-1)
    return [str(i) for i in range(top + 1)]


def _list_header(path: Path, lines: list[str]) -> tuple[list[str], list[str], int]:
    """(class names, their `file:row`, index of the first line after the header) of a file list; a list
    without the version line (version 1) has no header and names no classes."""
    if not lines or not lines[0].startswith(FILE_LIST_HEADER):
        return [], [], 0
    version = lines[0][len(FILE_LIST_HEADER):].strip()
    if not version.isdigit():
        raise DatasetError(f"{path}:1: expected '{FILE_LIST_HEADER} <version>', got {lines[0]!r}")
    if int(version) > FILE_LIST_VERSION:
        raise DatasetError(f"{path}:1: file-list version {version} is newer than this relic-fast reads "
                           f"({FILE_LIST_VERSION}); upgrade relic-fast")
    names, sources, number = [], [], 1
    while number < len(lines) and lines[number].startswith("#class "):
        match = _CLASS_LINE.fullmatch(lines[number])
        if match is None or int(match.group(1)) != len(names):
            raise DatasetError(f"{path}:{number + 1}: expected '#class {len(names)} <name>', got {lines[number]!r}")
        name = _class_name(path, number + 1, match.group(2))
        if name in names:
            raise DatasetError(f"{path}:{number + 1}: class {name!r} is named twice "
                               f"(first at {sources[names.index(name)]})")
        names.append(name)
        sources.append(f"{path}:{number + 1}")
        number += 1
    return names, sources, number


def _class_name(path: Path, row: int, text: str) -> str:
    """The name a `#class` line records: the rest of the line, or the JSON string literal that is all of it
    (quoting, module docstring)."""
    if not text.startswith('"'):
        return text
    try:
        name, end = _JSON_DECODER.raw_decode(text)
    except ValueError as err:
        raise DatasetError(f"{path}:{row}: a class name that opens with '\"' must be a JSON string literal "
                           f"({err.msg}), got {text!r}") from None
    if end != len(text) or not name:
        raise DatasetError(f"{path}:{row}: expected one non-empty JSON string literal after the class index, "
                           f"got {text!r}")
    return name


_LABEL = re.compile(r"-?[0-9]+")


def _list_line(path: Path, number: int, line: str, quoting: bool) -> tuple[str, int]:
    """(path, label) of one `path label` line; with `quoting` (version 2) a path opening with `"` is a JSON
    string literal (module docstring), any other path runs up to the whitespace before the label."""
    if quoting and line.startswith('"'):
        try:
            file, end = _JSON_DECODER.raw_decode(line)
        except ValueError as err:
            raise DatasetError(f"{path}:{number}: a path that opens with '\"' must be a JSON string literal "
                               f"({err.msg}), got {line!r}") from None
        label = line[end:]
        if not label[:1].isspace():
            raise DatasetError(f"{path}:{number}: expected '\"quoted path\" label', got {line!r}")
        label = label.strip()
    else:
        parts = line.rstrip().rsplit(maxsplit=1)
        file, label = (parts[0].strip(), parts[1]) if len(parts) == 2 else ("", "")
    if not file or not _LABEL.fullmatch(label):
        raise DatasetError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
    return file, int(label)


def _list_entry(root: Path, entry: str) -> str:
    """A list entry as the dataset keeps it: as written, except a relative path that climbs out of the
    list's folder (`../imgs/a.jpg`), which becomes the absolute path it names, normalized, so that it
    still has a place in a mask tree (`mask_file`). `root` is resolved (`resolve_dataset`), so its `..`
    is its real parent."""
    if ".." not in entry or entry.startswith("/"):
        return entry
    normalized = posixpath.normpath(entry)
    if normalized == ".." or normalized.startswith("../"):
        return posixpath.normpath(posixpath.join(os.fspath(root), entry))
    return entry


def _file_list(path: Path, masks: str) -> DatasetSpec:
    """A text list of `path label` lines (paths may contain spaces; the label is last), after an optional
    version-2 header naming the classes; in a version-2 list a path may be quoted (module docstring)."""
    try:
        # split at "\n" only: str.splitlines also breaks at \x0b, \x1c or U+2028, which a name may hold
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not a UTF-8 text file list ({err.reason} at byte {err.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    names, sources, start = _list_header(path, lines)
    root = path.parent
    files, labels = [], []
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        file, label = _list_line(path, number, line, quoting=start > 0)
        if names and label >= len(names):
            raise DatasetError(f"{path}:{number}: label {label}, but the header names {len(names)} classes")
        files.append(_list_entry(root, file))
        labels.append(label)
    if not files:
        raise DatasetError(f"{path}: the file list is empty")
    if not names:
        names = _numbered_names(labels)
    return DatasetSpec("file_list", root, files, labels, [], _resolve_masks(root, masks), names, len(files),
                       sources)


def file_list_text(paths: Sequence[str], labels: Sequence[int], class_names: Sequence[str]) -> str:
    """A version-2 file list (module docstring): the header naming `class_names`, then `path label` lines,
    each path and name quoted where it needs it (`list_field`). What `relic-fast index` writes; `_file_list`
    reads it back to the same files, labels and names. An empty class name, or a path or name that is not
    valid UTF-8 (filter those with `can_record`), is a `DatasetError` naming it."""
    for index, name in enumerate(class_names):
        if not name:
            raise DatasetError(f"class {index} has an empty name, which a file list cannot record")
    header = [f"{FILE_LIST_HEADER} {FILE_LIST_VERSION}\n"]
    header += [f"#class {index} {list_field(name)}\n" for index, name in enumerate(class_names)]
    text = "".join(header) + "".join(f"{list_field(path)} {label}\n" for path, label in zip(paths, labels))
    try:
        text.encode("utf-8")  # one pass over the whole text; the name at fault is looked for only on failure
    except UnicodeEncodeError:
        bad = next(value for value in [*class_names, *paths] if not can_record(value))
        raise DatasetError(f"{displayed_name(bad)}: the name is not valid UTF-8, which a file list cannot "
                           f"record") from None
    return text


def list_field(text: str) -> str:
    """How a version-2 file list writes a path or class name (module docstring, quoting): as it is, or as an
    ASCII JSON string literal when it is empty, starts with `#`, `"` or a space, ends with a space, or holds
    a character `str.isprintable` rejects; so a reader never takes it for a comment, trims it, or breaks
    its line."""
    if not text or text[0] in '#" ' or text[-1] == " " or not text.isprintable():
        return json.dumps(text)
    return text


def can_record(name: str) -> bool:
    """Whether a file list can hold `name`: it must be valid UTF-8. A file name that is not arrives from the
    OS with surrogate escapes, which neither UTF-8 text nor DALI's path strings carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def displayed_name(name: str) -> str:
    """`name` fit for a message or a UTF-8 report: each byte that is not valid UTF-8 shown as `\\xNN` (what
    the file system holds), instead of a surrogate that printing it would choke on."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _image_entry(entry: os.DirEntry) -> bool:
    """`_is_image` of a directory entry, without a stat where the file system reports the type."""
    return (entry.is_file() and not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)


def _flat_images(root: Path) -> list[str]:
    """Names of the images directly inside `root`, sorted."""
    with os.scandir(root) as entries:
        return sorted(entry.name for entry in entries if _image_entry(entry))


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


def _flat_folder(root: Path, labels: str, masks: str) -> DatasetSpec:
    """Images directly in `root`, labelled by the labels CSV (`labels`, else found by `find_labels_file`);
    unlabelled (label -1, no class names) when there is none."""
    files = _flat_images(root)
    if not files:
        raise DatasetError(f"{root}: no images found")
    mask_root = _resolve_masks(root, masks)
    labels_file = Path(labels).expanduser() if labels else find_labels_file(root)
    if labels_file is None:
        return DatasetSpec("file_list", root, files, [-1] * len(files), [], mask_root, [], len(files))
    if not labels_file.is_file():
        raise DatasetError(f"labels file {labels_file} does not exist")
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
    return DatasetSpec("file_list", root, files, [index[label_of[f][0]] for f in files], [], mask_root, names,
                       len(files), sources)


def scan_tar(path: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Samples of one shard: (key, {extension: member}) for consecutive regular files sharing a key.

    The one key rule of every WebDataset reader and writer here (the dataset scan, the indexes the readers
    and `relic-fast pack` write, the mask count, the names of bad files): the key is the member's name up to
    the first dot of its base name, the extension the rest in lower case (DALI's `wds2idx` rule, with `.JPG`
    read as `jpg` so that DALI finds it among `WDS_IMAGE_EXTENSIONS`). A member whose base name has no dot,
    or starts with one, belongs to no sample and is passed over. Samples without an image are kept here;
    callers decide (`image_member`)."""
    samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            slash = member.name.rfind("/") + 1
            dot = member.name.find(".", slash)
            if dot <= slash:
                continue
            key, ext = member.name[:dot], member.name[dot + 1:].lower()
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = member
    return samples


def image_member(members: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    """The image of a sample (`scan_tar`'s {extension: member}), or None: a sample without one is not read."""
    return next((members[e] for e in WDS_IMAGE_EXTENSIONS if e in members), None)


WDS_INDEX_VERSION = "v1.2"
"""The version of DALI's WebDataset index format (`wds2idx`) that `write_wds_index` writes."""


def write_wds_index(tar: Path, index: Path) -> int:
    """Write DALI's index of `tar` (what `fn.readers.webdataset(index_paths=...)` reads instead of scanning the
    tar at start-up) to `index`, atomically; returns the samples listed.

    Format `v1.2`: the line `v1.2 <samples>`, then per sample `ext offset size name` for each member, the
    offset being where the member's data starts. Samples as `scan_tar` groups them (its key rule), only those
    with an image (`image_member`), so the index lists exactly the samples the dataset counts. The one writer
    for the readers' private indexes and `relic-fast pack`'s, so an index beside a shard and one written for it
    later are the same file."""
    lines = [" ".join(f"{ext} {m.offset_data} {m.size} {m.name}" for ext, m in members.items())
             for _, members in scan_tar(tar) if image_member(members) is not None]
    write_text_atomically(index, f"{WDS_INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines))
    return len(lines)


def write_shard_classes(folder: Path, class_names: Sequence[str]) -> Path:
    """Record a shard set's class names in `folder/classes.json` (`write_text_atomically`)."""
    path = Path(folder) / WDS_CLASSES_FILE
    document = {"format": WDS_CLASSES_FORMAT, "version": 1, "classes": list(class_names)}
    write_text_atomically(path, json.dumps(document, indent=1) + "\n")
    return path


def _read_json(path: Path):
    """The JSON document in `path`, None when there is no such file; a `DatasetError` naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON: {err}") from None


def read_shard_classes(folder: Path) -> list[str] | None:
    """The class names in `folder/classes.json`, or None when the shard set records none."""
    path = Path(folder) / WDS_CLASSES_FILE
    data = _read_json(path)
    if data is None:
        return None
    names = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DatasetError(f"{path}: expected {{\"classes\": [\"name\", ...]}}")
    return names


@dataclass(frozen=True)
class ShardRecord:
    """What the manifest records of one shard: enough to tell that the shard (and its `.idx`) is the one
    `relic-fast pack` wrote. Sizes and sample counts are checked at every resolve (a stat, and the scan
    that counts the labels anyway); size and mtime also decide whether the `.idx` beside the tar still
    matches it (`dali_pipelines.readers.wds_index`); the SHA-256s are for a full audit after a copy
    (`sha256sum`), too slow to recompute at every start of a 140 GB set."""

    name: str
    """File name of the tar (`shard-000000.tar`), in the manifest's folder."""
    samples: int
    """Samples with an image in the tar."""
    size: int
    mtime_ns: int
    sha256: str
    index_name: str
    """File name of its DALI index (`shard-000000.idx`)."""
    index_size: int
    index_mtime_ns: int
    index_sha256: str


@dataclass(frozen=True)
class ShardManifest:
    """A shard set's `manifest.json`: its shards in order and the file naming its classes."""

    path: Path
    shards: list[ShardRecord]
    classes_file: str
    """File name (in the same folder) of the class names: `classes.json`, the one place they are kept."""

    def record(self, name: str) -> ShardRecord | None:
        """The record of the tar named `name`, or None when the manifest does not list it."""
        return next((r for r in self.shards if r.name == name), None)


def write_shard_manifest(folder: Path, shards: Sequence[ShardRecord], classes_file: str = WDS_CLASSES_FILE) -> Path:
    """Write `folder/manifest.json` (`write_text_atomically`): format, version, the classes file,
    the total sample count and per shard its record (`ShardRecord`), so a reader can tell a complete set
    from a partial or altered one."""
    path = Path(folder) / WDS_MANIFEST_FILE
    shard_entries = [{"name": r.name, "samples": r.samples, "bytes": r.size, "mtime_ns": r.mtime_ns,
                      "sha256": r.sha256, "index": {"name": r.index_name, "bytes": r.index_size,
                                                    "mtime_ns": r.index_mtime_ns, "sha256": r.index_sha256}}
                     for r in shards]
    document = {"format": WDS_MANIFEST_FORMAT, "version": WDS_MANIFEST_VERSION, "classes": classes_file,
                "samples": sum(r.samples for r in shards), "shards": shard_entries}
    write_text_atomically(path, json.dumps(document, indent=1) + "\n")
    return path


def _manifest_fields_ok(entry, suffix: str) -> bool:
    """Whether a manifest entry (a shard, or its `index`) is a dict with a plain file name ending in `suffix`
    (no folder part), non-negative integer sizes and counts, and a SHA-256 string."""
    if not isinstance(entry, dict):
        return False
    name, numbers = entry.get("name"), [entry.get(k) for k in ("bytes", "mtime_ns")]
    if suffix == ".tar":
        numbers.append(entry.get("samples"))
    return (isinstance(name, str) and name.endswith(suffix) and "/" not in name and isinstance(entry.get("sha256"), str)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers))


def _shard_record(path: Path, entry) -> ShardRecord:
    """One manifest entry as a `ShardRecord`; a `DatasetError` naming the manifest when it is malformed."""
    if not (_manifest_fields_ok(entry, ".tar") and _manifest_fields_ok(entry.get("index"), ".idx")):
        raise DatasetError(f"{path}: malformed shard entry {json.dumps(entry)[:200]} (expected name, samples, bytes, "
                           f"mtime_ns, sha256 and index {{name, bytes, mtime_ns, sha256}})")
    index = entry["index"]
    return ShardRecord(entry["name"], entry["samples"], entry["bytes"], entry["mtime_ns"], entry["sha256"],
                       index["name"], index["bytes"], index["mtime_ns"], index["sha256"])


def read_shard_manifest(folder: Path) -> ShardManifest | None:
    """The manifest in `folder/manifest.json`, or None when there is none; a `DatasetError` naming the file
    when it is not one (unreadable, another format, a newer version, a malformed entry)."""
    path = Path(folder) / WDS_MANIFEST_FILE
    data = _read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != WDS_MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not a relic-fast shard manifest (expected \"format\": \"{WDS_MANIFEST_FORMAT}\")")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise DatasetError(f"{path}: expected a version number, got {version!r}")
    if version > WDS_MANIFEST_VERSION:
        raise DatasetError(f"{path}: manifest version {version} is newer than this relic-fast reads "
                           f"({WDS_MANIFEST_VERSION}); upgrade relic-fast")
    if not isinstance(data.get("shards"), list) or data.get("classes") != WDS_CLASSES_FILE:  # v1: always classes.json
        raise DatasetError(f"{path}: expected \"classes\": \"{WDS_CLASSES_FILE}\" and \"shards\": [...]")
    shards = [_shard_record(path, entry) for entry in data["shards"]]
    return ShardManifest(path, shards, data["classes"])


def _classes_written_by_pack(folder: Path) -> bool:
    """Whether `folder/classes.json` is one `relic-fast pack` wrote (its `format` says so)."""
    try:
        data = json.loads((Path(folder) / WDS_CLASSES_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == WDS_CLASSES_FORMAT


def check_shard_manifest(root: Path, tar_paths: Sequence[Path]) -> ShardManifest | None:
    """Check the shards about to be read against `root/manifest.json` (cheap: names and sizes here, sample
    counts in `_webdataset`'s scan) and return the manifest, or None for third-party shards without one.

    Refused (`DatasetError`, naming the file): a listed shard missing (when the whole folder is read), a
    `.tar` the manifest does not list, a size that differs, the classes file gone, or no manifest although
    `classes.json` says `relic-fast pack` wrote the set (it may be a partial copy). Shards without either
    file are someone else's WebDataset: read unchecked, with one warning line."""
    manifest = read_shard_manifest(root)
    if manifest is None:
        if _classes_written_by_pack(root):
            raise DatasetError(f"{root / WDS_MANIFEST_FILE}: missing, although {WDS_CLASSES_FILE} says relic-fast "
                               f"pack wrote these shards: the set may be incomplete; pack it again (--overwrite)")
        warnings.warn(f"{root}: no {WDS_MANIFEST_FILE} (not written by relic-fast pack): its {len(tar_paths)} "
                      f"shards are read unchecked, a missing or truncated shard goes unnoticed", stacklevel=3)
        return None
    on_disk = {p.name for p in root.iterdir() if p.suffix == ".tar"}
    if {p.name for p in tar_paths} == on_disk:  # the whole folder, not one tar of it: every shard must be there
        missing = [r.name for r in manifest.shards if r.name not in on_disk]
        if missing:
            raise DatasetError(f"{root / missing[0]}: listed in {manifest.path} but missing ({len(missing)} of "
                               f"{len(manifest.shards)} shards missing); copy the set again or pack it again")
    for path in tar_paths:
        record = manifest.record(path.name)
        if record is None:
            raise DatasetError(f"{path}: not listed in {manifest.path} (a shard of another set?); move it out or "
                               f"pack the set again")
        size = path.stat().st_size
        if size != record.size:
            raise DatasetError(f"{path}: {size} bytes, but {manifest.path} records {record.size}: the shard was "
                               f"changed or cut short; copy the set again or pack it again")
    if not (root / manifest.classes_file).is_file():
        raise DatasetError(f"{root / manifest.classes_file}: missing, but {manifest.path} names it as the classes "
                           f"file; copy the set again or pack it again")
    return manifest


def _webdataset(root: Path, tar_paths: list[Path]) -> DatasetSpec:
    """Shards: count the samples that have an image and read their `.cls` labels (-1 when absent); class
    names from `classes.json` beside the shards (a label beyond them is an error). The shards are first
    checked against the set's manifest (`check_shard_manifest`), their sample counts while counting."""
    manifest = check_shard_manifest(root, tar_paths)
    named = read_shard_classes(root)
    labels = []
    for path in tar_paths:
        samples = scan_tar(path)
        counted_before = len(labels)
        with tarfile.open(path) as tar:
            for _, members in samples:
                if image_member(members) is None:
                    continue
                cls = members.get(WDS_LABEL_EXTENSION)
                text = tar.extractfile(cls).read().decode("ascii", "replace").strip() if cls else ""
                labels.append(int(text) if text.lstrip("-").isdigit() else -1)
                if named is not None and labels[-1] >= len(named):
                    raise DatasetError(f"{path}: sample {image_member(members).name} has label {labels[-1]}, but "
                                       f"{root / WDS_CLASSES_FILE} names {len(named)} classes")
        recorded = manifest.record(path.name).samples if manifest is not None else None
        if recorded is not None and len(labels) - counted_before != recorded:
            raise DatasetError(f"{path}: {len(labels) - counted_before} image samples, but {manifest.path} records "
                               f"{recorded}: the shard was changed; copy the set again or pack it again")
    if not labels:
        raise DatasetError(f"{root}: the WebDataset shards hold no image samples")
    names = named if named is not None else _numbered_names(labels)
    return DatasetSpec("webdataset", root, [], labels, tar_paths, None, names, len(labels),
                       [f"{root / WDS_CLASSES_FILE}: class {i}" for i in range(len(names))] if named else [])


def _auto_format(path: Path) -> str:
    """Infer the layout of `path`: list file, shard(s), folder tree, or "flat" (images directly in the
    folder and no subfolder)."""
    if path.is_file():
        return "webdataset" if path.suffix == ".tar" else "file_list"
    with os.scandir(path) as scan:
        entries = list(scan)
    if any(e.name.endswith(".tar") and e.is_file() for e in entries):
        return "webdataset"
    if not any(e.is_dir() and not e.name.startswith(".") for e in entries) and any(map(_image_entry, entries)):
        return "flat"
    return "folder"


def resolve_dataset(path: str, format: str = "auto", masks: str = "", labels: str = "",
                    classes: str = "") -> DatasetSpec:
    """Resolve `path` (see the module docstring) into a `DatasetSpec`; `masks` overrides the mask root,
    `labels` names a flat folder's labels CSV, `classes` (`data.classes`) keeps only those classes."""
    if not path:
        raise DatasetError("no dataset path given (the trainer substitutes the demo dataset for an empty path)")
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise DatasetError(f"dataset path {source} does not exist")
    if source.is_dir() and (source / "train").is_dir() and format in ("auto", "folder"):
        source = source / "train"  # a demo-data root: its train split, masks at <root>/masks/train
    kind = _auto_format(source) if format == "auto" else format
    if kind == "folder":
        if not source.is_dir():
            raise DatasetError(f"{source} is not a folder (format 'folder')")
        spec = _folder(source, masks)
    elif kind == "flat":
        spec = _flat_folder(source, labels, masks)
    elif kind == "file_list":
        if not source.is_file():
            raise DatasetError(f"{source} is not a file list (format 'file_list')")
        spec = _file_list(source, masks)
    elif kind == "webdataset":
        tars = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.suffix == ".tar")
        if not tars:
            raise DatasetError(f"{source}: no .tar shards found")
        spec = _webdataset(source if source.is_dir() else source.parent, tars)
    else:
        raise DatasetError(f"unknown dataset format {format!r} (expected auto, folder, file_list, webdataset)")
    return restrict_classes(spec, read_class_list(classes), strict=True) if classes else spec


# ---------------------------------------------------------------- class subsets and evaluation splits

@dataclass(frozen=True)
class ClassList:
    """A `data.classes` list: class names and the row of the file that names each."""

    path: Path
    names: list[str]
    rows: list[int]


def class_list_path(value: str) -> Path:
    """The file behind a `data.classes` value: a built-in list's (`BUILTIN_CLASS_LISTS`) or the path given."""
    if value in BUILTIN_CLASS_LISTS:
        return CLASS_LISTS_DIR / BUILTIN_CLASS_LISTS[value]
    return Path(value).expanduser()


def read_class_list(value: str) -> ClassList:
    """Read a class list (one class name per line; blank and `#` lines skipped; a name twice is an error)."""
    path = class_list_path(value)
    if not path.is_file():
        known = ", ".join(BUILTIN_CLASS_LISTS)
        raise DatasetError(f"data.classes: {path} does not exist (give a file of class names, one per line, "
                           f"or a built-in list: {known})")
    names: list[str] = []
    rows: list[int] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise DatasetError(f"{path}:{number}: class {name!r} is listed twice (first at row "
                               f"{rows[names.index(name)]})")
        names.append(name)
        rows.append(number)
    if not names:
        raise DatasetError(f"{path}: the class list names no class")
    return ClassList(path, names, rows)


def _relabel(spec: DatasetSpec, mapping: dict[int, int], class_names: list[str], class_sources: list[str],
             keep_unmapped: bool) -> DatasetSpec:
    """`spec` with label l replaced by mapping[l]; samples whose label is not in `mapping` are dropped
    (or, with `keep_unmapped`, kept with label -1)."""
    if spec.kind == "webdataset":
        if any(old != new for old, new in mapping.items()) or (not keep_unmapped and any(
                label not in mapping for label in spec.labels)):
            raise DatasetError(f"{spec.root}: the shards' class indices cannot be changed or filtered when read "
                               f"(the readers stream whole shards); pack the split with the train split's classes")
        return dataclasses.replace(spec, class_names=class_names, class_sources=class_sources)
    keep = [i for i, label in enumerate(spec.labels) if keep_unmapped or label in mapping]
    files = [spec.files[i] for i in keep]
    labels = [mapping.get(spec.labels[i], -1) for i in keep]
    if not files:
        raise DatasetError(f"{spec.root}: no images left of the classes asked for")
    return dataclasses.replace(spec, files=files, labels=labels, class_names=class_names,
                               class_sources=class_sources, num_samples=len(files))


def restrict_classes(spec: DatasetSpec, subset: ClassList, *, strict: bool) -> DatasetSpec:
    """`spec` with only the samples of `subset`'s classes, re-indexed 0..K-1 in the spec's own class order.

    `strict` (a train split): every listed class must be one of the spec's, else a `DatasetError` naming
    the list's file and row. Not strict (an evaluation split): listed classes the split lacks are fine."""
    position = {name: i for i, name in enumerate(spec.class_names)}
    if strict:
        for name, row in zip(subset.names, subset.rows):
            if name not in position:
                raise DatasetError(f"{subset.path}:{row}: class {name!r} is not a class of {spec.root} "
                                   f"({len(spec.class_names)} classes)")
    chosen = set(subset.names)
    kept = [i for i, name in enumerate(spec.class_names) if name in chosen]
    sources = [spec.class_sources[i] for i in kept] if spec.class_sources else []
    return _relabel(spec, {old: new for new, old in enumerate(kept)}, [spec.class_names[i] for i in kept],
                    sources, keep_unmapped=False)


def is_labelled(spec: DatasetSpec) -> bool:
    """Whether `spec` has class names (an unlabelled flat folder or shards without `.cls` have none)."""
    return bool(spec.class_names)


def unlabelled_reason(spec: DatasetSpec, *, brief: bool = False) -> str:
    """Why `spec` has no labels and, unless `brief`, what gives it some (for messages after its root)."""
    if spec.kind == "webdataset":
        return "its shards hold no .cls labels"
    if not (spec.root.is_dir() and _auto_format(spec.root) == "flat"):
        return "its samples carry no labels"
    name = LABELS_FILE_PATTERN.format(folder=spec.root.name)
    if brief:
        return f"no labels file ({name} not found)"
    return (f"a flat folder without a labels file (no {name} in it or the {LABELS_LOOKUP_DEPTH} folders above "
            f"it); name one with --val-labels FILE (data.val_labels)")


def align_split(spec: DatasetSpec, *, train: DatasetSpec, classes: str = "") -> DatasetSpec:
    """An evaluation split with the train split's class indices: its labels mapped by class NAME onto
    `train.class_names` (`classes`: first drop the other classes' samples).

    A `DatasetError` when the split is unlabelled or uses a class the train split lacks (naming where the
    split declares that class: its file and row, or its class folder)."""
    if not is_labelled(spec):
        raise DatasetError(f"{spec.root}: {unlabelled_reason(spec)}; an evaluation split needs labels")
    if classes:
        spec = restrict_classes(spec, read_class_list(classes), strict=False)
    index = {name: i for i, name in enumerate(train.class_names)}
    mapping = {}
    for label in sorted({label for label in spec.labels if label >= 0}):
        name = spec.class_names[label]
        if name not in index:
            where = spec.class_sources[label] if spec.class_sources else str(spec.root)
            raise DatasetError(f"{where}: class {name!r} is not a class of the train split {train.root} "
                               f"({len(train.class_names)} classes)")
        mapping[label] = index[name]
    if list(spec.class_names) == list(train.class_names):
        return spec
    return _relabel(spec, mapping, list(train.class_names), list(train.class_sources), keep_unmapped=True)


def resolve_split(path: str | Path, *, train: DatasetSpec, labels: str = "", classes: str = "",
                  format: str = "auto", masks: str = "") -> DatasetSpec:
    """The evaluation split at `path` (any layout; `labels`: a flat folder's labels CSV) with the train
    split's class indices (`align_split`)."""
    return align_split(resolve_dataset(str(path), format, masks, labels), train=train, classes=classes)


def find_monitor_split(data_path: str, explicit: str = "", labels: str = "") -> Path | None:
    """The split the pretraining monitor (kNN, online probe) scores, or None when there is none.

    1. `explicit` (`pretrain --val`, `data.val`): that path, which must exist (else a `DatasetError`);
    2. else `<data_path>/val` when `data_path` is a folder holding one (the demo layout: train/, val/);
    3. else the `val` beside a data folder named `train` (`--data .../CLS-LOC/train` gives
       `.../CLS-LOC/val`, Kaggle's flat validation folder).
    A split found by 2 or 3 counts only when it is labelled: a flat folder needs its labels file
    (`labels`, `data.val_labels`, else `LOC_val_solution.csv` found by looking up, `find_labels_file`);
    an unlabelled one gives None. Read the result with `resolve_split(path, train=..., labels=labels)`,
    which also checks its classes against the train split's.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise DatasetError(f"validation split {path} (data.val) does not exist")
        return path
    if not data_path:
        return None
    data = Path(data_path).expanduser().resolve()
    if (data / "val").is_dir():
        candidate = data / "val"
    elif data.is_dir() and data.name == "train" and (data.parent / "val").is_dir():
        candidate = data.parent / "val"
    else:
        return None
    if _auto_format(candidate) == "flat" and not labels and find_labels_file(candidate) is None:
        return None
    return candidate
