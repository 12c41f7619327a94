"""What a dataset path holds: `resolve_dataset` turns a folder tree, a file list or WebDataset shards into a `DatasetSpec`.

The spec is plain data (paths, labels, counts) that the readers turn into DALI readers and that
tools (`relic-fast index`, `pack`) inspect. Layouts:
- folder tree `root/<class>/<image>`: class index from the sorted class-folder names;
- file list (`.txt`): `relative/path label` per line, paths relative to the list's folder;
- WebDataset: a folder of `.tar` shards (or one `.tar`), samples `<key>.jpg|.jpeg|.png`, optional
  `<key>.cls` (ASCII label) and `<key>.mask.png` (saliency mask).
A demo-data root (a folder holding `train/`) resolves to its `train/` split. Saliency masks of folder
and file-list datasets live in a parallel tree: `<mask_root>/<relative image path, suffix .png>`;
by default `<root>/../masks/<root name>` when that folder exists (the demo-data layout).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""File suffixes (lower case) the folder reader treats as images (DALI's decoder reads them all)."""

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
"""Extensions of the image member of a WebDataset sample."""

WDS_LABEL_EXTENSION = "cls"
WDS_MASK_EXTENSION = "mask.png"


class DatasetError(ValueError):
    """A dataset path that does not exist, holds no images, or has a malformed file list."""


@dataclass(frozen=True)
class DatasetSpec:
    """A resolved dataset: enough to build readers and to list (and validate) its samples."""

    kind: str
    """"folder", "file_list" or "webdataset"."""
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
    """Name of each class index (folder names; label strings for lists and shards)."""
    num_samples: int = 0
    """Number of samples (images)."""


def mask_file(mask_root: Path, relative_image: str) -> Path:
    """Where the saliency mask of `relative_image` lives: same relative path, suffix `.png`."""
    return Path(mask_root) / Path(relative_image).with_suffix(".png")


def _default_mask_root(root: Path) -> Path | None:
    """`<root>/../masks/<root name>` when it exists (demo-data layout), else None."""
    candidate = root.parent / "masks" / root.name
    return candidate if candidate.is_dir() else None


def _resolve_masks(root: Path, masks: str) -> Path | None:
    """The explicit mask root (which must exist), or the default one."""
    if masks:
        path = Path(masks).expanduser()
        if not path.is_dir():
            raise DatasetError(f"saliency mask folder {path} does not exist")
        return path
    return _default_mask_root(root)


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
    return DatasetSpec("folder", root, files, labels, [], _resolve_masks(root, masks), classes, len(files))


def _file_list(path: Path, masks: str) -> DatasetSpec:
    """A text list of `relative/path label` lines (paths may contain spaces; the label is last)."""
    files, labels = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rstrip().rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{number}: expected 'relative/path label', got {line!r}")
        files.append(parts[0].strip())
        labels.append(int(parts[1]))
    if not files:
        raise DatasetError(f"{path}: the file list is empty")
    root = path.parent
    names = [str(i) for i in range(max(labels) + 1)] if max(labels) >= 0 else []
    return DatasetSpec("file_list", root, files, labels, [], _resolve_masks(root, masks), names, len(files))


def scan_tar(path: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Samples of one shard as DALI groups them: (key, {extension: member}) for consecutive members
    sharing a key (the name up to the first dot of its base name). Samples without an image are kept
    here; callers decide."""
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


def _image_member(members: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    return next((members[e] for e in WDS_IMAGE_EXTENSIONS if e in members), None)


def _webdataset(root: Path, tar_paths: list[Path]) -> DatasetSpec:
    """Shards: count the samples that have an image and read their `.cls` labels (-1 when absent)."""
    labels = []
    for path in tar_paths:
        samples = scan_tar(path)
        with tarfile.open(path) as tar:
            for _, members in samples:
                if _image_member(members) is None:
                    continue
                cls = members.get(WDS_LABEL_EXTENSION)
                text = tar.extractfile(cls).read().decode("ascii", "replace").strip() if cls else ""
                labels.append(int(text) if text.lstrip("-").isdigit() else -1)
    if not labels:
        raise DatasetError(f"{root}: the WebDataset shards hold no image samples")
    names = [str(i) for i in range(max(labels) + 1)] if max(labels) >= 0 else []
    return DatasetSpec("webdataset", root, [], labels, tar_paths, None, names, len(labels))


def _auto_format(path: Path) -> str:
    """Infer the layout of `path`: list file, shard(s) or folder tree."""
    if path.is_file():
        return "webdataset" if path.suffix == ".tar" else "file_list"
    if any(p.suffix == ".tar" for p in path.iterdir() if p.is_file()):
        return "webdataset"
    return "folder"


def resolve_dataset(path: str, format: str = "auto", masks: str = "") -> DatasetSpec:
    """Resolve `path` (see the module docstring) into a `DatasetSpec`; `masks` overrides the mask root."""
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
        return _folder(source, masks)
    if kind == "file_list":
        if not source.is_file():
            raise DatasetError(f"{source} is not a file list (format 'file_list')")
        return _file_list(source, masks)
    if kind == "webdataset":
        tars = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.suffix == ".tar")
        if not tars:
            raise DatasetError(f"{source}: no .tar shards found")
        return _webdataset(source if source.is_dir() else source.parent, tars)
    raise DatasetError(f"unknown dataset format {format!r} (expected auto, folder, file_list, webdataset)")
