"""What every dataset format shares: the resolved dataset (`DatasetSpec`), its error (`DatasetError`), the
interface a format implements (`DatasetFormat`: list, read, masks, labels) and the saliency-mask tree rule
(`mask_file`) of the formats whose samples are image files.

Saliency masks of folder, file-list and flat datasets live in a parallel tree (`mask_file`, the one rule the
readers and `relic-fast masks` share): `<mask_root>/<relative image path, normalized, suffix .png>`, and for
an absolute entry (what `relic-fast index --out elsewhere` writes, or a `..` entry made absolute)
`<mask_root>/_abs/<absolute image path without its leading />, suffix .png>`. The rule reads the entry, not
the disk, so a mask never lands outside the mask root and symlinks in the image tree move no mask; the mask
root may not be the dataset folder itself (the mask of a PNG image would be the image). By default the mask
root is `<root>/../masks/<root name>` when that folder exists (the demo-data layout).
"""

from __future__ import annotations

import functools
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from dali_pipelines.readers import Encoded, ReadPlan

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""File suffixes (lower case) the folder reader treats as images (DALI's decoder reads them all)."""

MASKS_OUTSIDE_ROOT = "_abs"
"""Folder of a mask tree holding the masks of absolute entries: `<mask_root>/_abs/<path without its
leading />` (`mask_file`)."""


class DatasetError(ValueError):
    """A dataset path that does not exist or holds no images, a malformed file list, labels file or class
    list, or a split whose classes disagree with the train split's; the message names the file and row."""


@dataclass(frozen=True)
class MaskTable:
    """Per sample (dataset order) of a dataset of image files: the mask file to read and whether it is a
    real mask (a missing one reads a 1x1 all-foreground placeholder and `present` False)."""

    paths: list[str]
    present: np.ndarray


class MaskCoverage(NamedTuple):
    """How many of a dataset's images have a saliency mask (images without one are never blended)."""

    with_mask: int
    images: int

    def __str__(self) -> str:
        return f"{self.with_mask:,} / {self.images:,} images"


@dataclass(frozen=True)
class DatasetSpec:
    """A resolved dataset: enough to build readers and to list (and validate) its samples. Its `format` says
    how it is listed, read and masked; nothing else asks which format it is."""

    format: DatasetFormat
    """The format that resolved it (`dali_pipelines.formats.registry.FORMATS`); `format.name` names it."""
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

    @functools.cached_property
    def mask_table(self) -> MaskTable | None:
        """The mask file of each sample (`DatasetFormat.mask_table`; None where the format keeps masks
        elsewhere or there is no mask root). Built once per spec (one stat per image) and kept: the start-up
        coverage check and the loader share it."""
        return self.format.mask_table(self)

    def mask_coverage(self) -> MaskCoverage:
        """Images with a saliency mask out of all images (`DatasetFormat.mask_coverage`)."""
        return self.format.mask_coverage(self)


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset format: how a path of it is recognized and listed (`detects`, `resolve`), how a pipeline
    reads its encoded images, labels and masks (`read_encoded`), where its masks are, what a bad file is to
    it, and what its labels allow. One instance per format, registered in `registry.FORMATS`; subclasses hold
    no fields, so two instances of one format compare equal."""

    name = ""
    """The format's name: the `data.format` value that asks for it, and what the plan prints."""
    description = ""
    """What a path of this format holds, for messages ("a folder tree", "WebDataset shards")."""
    image_files = True
    """Whether each sample is an image file at `root / files[i]`, which tools that read files one by one
    (`relic-fast index`, the bad-file filter, the torchvision baseline) can open; False: packed images."""
    chunkable = True
    """Whether a pipeline may read several epochs of a rank's explicit sample list back to back (the loader's
    chunks); False: one pipeline per epoch, DALI sharding the samples."""

    def detects(self, path: Path, entries: list[os.DirEntry] | None) -> bool:
        """Whether `path` (with `entries`, its folder's entries; None for a file) looks like this format.
        `registry.detect` asks the formats in order; the first that says yes resolves the path."""
        raise NotImplementedError

    def resolve(self, path: Path, *, masks: str, labels: str) -> DatasetSpec:
        """List the samples at `path` (`masks`: the mask root asked for; `labels`: a labels file asked for)."""
        raise NotImplementedError

    def read_encoded(self, plan: ReadPlan, name: str) -> Encoded:
        """The DALI readers of `plan` inside a pipeline definition (`readers.read_encoded`)."""
        raise NotImplementedError

    def mask_table(self, spec: DatasetSpec) -> MaskTable | None:
        """The mask file of each sample; None (the default) where masks are not separate files."""
        return None

    def mask_coverage(self, spec: DatasetSpec) -> MaskCoverage:
        """Images with a saliency mask out of all images."""
        raise NotImplementedError

    def can_read_masks(self, spec: DatasetSpec) -> bool:
        """Whether a pipeline over `spec` may find masks at all (the loader reads them only then)."""
        raise NotImplementedError

    def missing_masks(self, spec: DatasetSpec) -> str:
        """Where `spec`'s masks were looked for and none found, for the message that stops a masking run."""
        raise NotImplementedError

    def epoch_items(self, spec: DatasetSpec) -> int:
        """How many items an epoch's order permutes (`readers.epoch_order`): samples, unless the format is
        read in bigger pieces."""
        return spec.num_samples

    def sources(self, plan: ReadPlan, in_flight: np.ndarray) -> list[str]:
        """The files (or members) a rank of `plan` reads, those of `in_flight` (the rank's sample indices from
        the batch in flight on) first where the format reads samples by index: where to look for the one that
        stopped a pipeline."""
        raise NotImplementedError

    def relabel(self, spec: DatasetSpec, mapping: dict[int, int], class_names: list[str],
                class_sources: list[str], keep_unmapped: bool) -> DatasetSpec:
        """`spec` with label l replaced by mapping[l]; samples whose label is not in `mapping` are dropped (or,
        with `keep_unmapped`, kept with label -1)."""
        raise NotImplementedError

    def unlabelled_reason(self, spec: DatasetSpec, *, brief: bool = False) -> str:
        """Why `spec` has no labels and, unless `brief`, what gives it some (for messages after its root)."""
        return "its samples carry no labels"

    def has_labels(self, path: Path, labels: str) -> bool:
        """Whether the data at `path` carries labels, as far as can be told without listing it (`labels`: a
        labels file asked for); the monitor passes over a split found by looking when it says no."""
        return True


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


def resolve_masks(root: Path, masks: str) -> Path | None:
    """The explicit mask root (which must exist), or the default one (`<root>/../masks/<root name>` when it
    exists); never the dataset folder itself (`check_mask_root`)."""
    if masks:
        path = Path(masks).expanduser()
        if not path.is_dir():
            raise DatasetError(f"saliency mask folder {path} does not exist")
    else:
        candidate = root.parent / "masks" / root.name
        path = candidate if candidate.is_dir() else None
    if path is not None:
        check_mask_root(path, root)
    return path


def numbered_names(labels: list[int]) -> list[str]:
    """Class names "0".."N-1" of a source that names none (N: the largest label + 1; none when unlabelled)."""
    top = max(labels, default=-1)
    return [str(i) for i in range(top + 1)]


def is_image_entry(entry: os.DirEntry) -> bool:
    """Whether a directory entry is an image file (`IMAGE_SUFFIXES`, not hidden), without a stat where the
    file system reports the type."""
    return (entry.is_file() and not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES)
