"""DALI readers for one rank: encoded images, labels and saliency masks, sharded and seeded.

Shuffling and sharding of folder and file-list datasets are ours, not DALI's: epoch e's order is a
permutation drawn from (seed, e), identical on every rank; rank r reads slice r of it
(`rank_samples`: DistributedSampler's contract, disjoint ranks covering the data each epoch, the
same number of steps on every rank) and DALI just reads the rank's list in order. So a run is
reproducible from its seed, and the loader always knows which files a rank reads (to name a bad
one). (DALI's `shuffle_after_epoch` uses a hard-coded seed and hides the order; `random_shuffle`
is a buffer shuffle after a hidden global shuffle.) A rank's list may hold several epochs back to
back, so one pipeline serves many epochs of a small dataset. Image and mask come from two
`fn.readers.file` fed the same ordered list (same length, no DALI shuffling): sample i of both is
the same image. WebDataset shards keep image and mask in one sample; there the epoch permutes the
shards, DALI shards the samples (`shard_id`/`num_shards`, `stick_to_shard`) and a seeded buffer
shuffle mixes samples within the rank's slice.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types

from dali_pipelines.atomic import write_atomically
from dali_pipelines.dataset import (WDS_IMAGE_EXTENSIONS, WDS_LABEL_EXTENSION, WDS_MANIFEST_FILE,
                                    WDS_MASK_EXTENSION, DatasetError, DatasetSpec, ShardManifest, image_member,
                                    mask_file, read_shard_manifest, scan_tar, write_wds_index)

READER_NAME = "reader"
"""Name of the image reader: the DALI iterator's `reader_name` (epoch size, padding)."""

WDS_BUFFER = 1024
"""Samples in the WebDataset reader's shuffle buffer."""


@dataclass(frozen=True)
class MaskTable:
    """Per sample (dataset order) of a folder/file-list dataset: the mask file to read and whether
    it is a real mask (a missing one reads a 1x1 all-foreground placeholder and `present` False)."""

    paths: list[str]
    present: np.ndarray


@dataclass(frozen=True)
class ReadPlan:
    """What one pipeline reads: for folder/file lists the rank's sample indices in read order (DALI
    shard 0 of 1); for webdataset the shard order, sharded by DALI."""

    dataset: DatasetSpec
    samples: np.ndarray
    """Sample indices to read in order (folder/file list) or shard indices (webdataset)."""
    shard_id: int = 0
    num_shards: int = 1
    reader_seed: int = 0
    """Seed of the WebDataset shuffle buffer."""
    shuffle: bool = False
    masks: MaskTable | None = None
    """Masks of a folder/file-list dataset, None when masks are not read."""
    read_wds_masks: bool = False
    """Read the `.mask.png` member of WebDataset samples."""


class Encoded(NamedTuple):
    """The reader outputs inside a pipeline: encoded image bytes, int32 label of shape (1,), and the
    encoded mask bytes with a scalar bool `has_mask` (both None when masks are not read)."""

    images: object
    labels: object
    mask_bytes: object | None
    has_mask: object | None


def epoch_order(num_items: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's permutation of `num_items` (samples, or shards for webdataset): seeded by (seed, epoch)."""
    if not shuffle:
        return np.arange(num_items)
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def shard_bounds(num_samples: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """[start, end) of rank `shard_id`'s slice: DALI's reader arithmetic, floor(id * n / shards)."""
    return num_samples * shard_id // num_shards, num_samples * (shard_id + 1) // num_shards


def steps_per_epoch(num_samples: int, num_shards: int, batch_size: int, drop_last: bool) -> int:
    """Steps every rank takes per epoch: the smallest slice's full batches (drop_last), else enough
    batches for the largest slice (smaller ones padded)."""
    smallest, largest = num_samples // num_shards, -(-num_samples // num_shards)
    return smallest // batch_size if drop_last else -(-largest // batch_size)


def rank_samples(num_samples: int, *, seed: int, epoch: int, shuffle: bool, shard_id: int, num_shards: int,
                 batch_size: int, drop_last: bool) -> np.ndarray:
    """Sample indices rank `shard_id` reads in `epoch`: its slice of the epoch's order, cut to whole
    batches (drop_last) or padded by repeating its last sample, `steps_per_epoch * batch_size` long."""
    order = epoch_order(num_samples, seed=seed, epoch=epoch, shuffle=shuffle)
    start, end = shard_bounds(num_samples, shard_id, num_shards)
    count = steps_per_epoch(num_samples, num_shards, batch_size, drop_last) * batch_size
    mine = order[start:end][:count]
    return np.concatenate([mine, np.full(count - len(mine), mine[-1])]) if len(mine) < count else mine


CACHE_FOLDER = "relic-fast"
"""Folder under `$XDG_CACHE_HOME` (default `~/.cache`) for the files the readers write for DALI."""

INDEX_FOLDER = "wds-index"
"""Inside the private cache folder: WebDataset indexes written for shards without a usable `.idx`."""


def _cache_home() -> Path | None:
    """`$XDG_CACHE_HOME` when it is an absolute path (the XDG rule), else `~/.cache`; None without a home."""
    value = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(value):
        return Path(value)
    try:
        return Path.home() / ".cache"
    except (RuntimeError, KeyError):
        return None


def _check_private(folder: Path) -> None:
    """A `DatasetError` unless `folder` is a folder this user owns and no one else can write to (anyone who
    can write there could plant the files DALI reads)."""
    try:
        info = os.stat(folder)
    except OSError as err:
        problem = f"cannot be inspected ({err.strerror})"
    else:
        problem = ("is not a folder" if not stat.S_ISDIR(info.st_mode)
                   else f"belongs to user id {info.st_uid}, not to you ({os.getuid()})" if info.st_uid != os.getuid()
                   else f"can be written by others (mode {stat.S_IMODE(info.st_mode):o})" if info.st_mode & 0o022
                   else None)
    if problem:
        raise DatasetError(f"{folder}: {problem}; relic-fast keeps the files DALI reads there (placeholder mask, "
                           f"shard indexes) and needs a folder only you can write to: chmod 700 it, remove it, or "
                           f"set XDG_CACHE_HOME")


@functools.cache
def _process_private_dir() -> Path:
    """A fresh 0700 folder of this process (`mkdtemp`: an unpredictable name, nothing to plant), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="relic-fast-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def private_cache_dir() -> Path:
    """The folder of the files the readers write for DALI to read (the placeholder mask, WebDataset indexes).

    `$XDG_CACHE_HOME/relic-fast` (default `~/.cache/relic-fast`): created 0700 and refused (`DatasetError`)
    unless this user owns it and no one else can write to it, because a fixed name in the shared /tmp can be
    planted by another local user. Per user rather than per process, so every rank and worker of a run (and
    later runs) agree on the paths and reuse the files, which are written under a temporary name and renamed.
    Where no cache folder can be made (a read-only home in a container), a private `mkdtemp` folder of this
    process."""
    home = _cache_home()
    if home is None:
        return _process_private_dir()
    folder = home / CACHE_FOLDER
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # something that is not a folder holds the name: _check_private names it
    except OSError:
        return _process_private_dir()
    _check_private(folder)
    return folder


def placeholder_mask() -> Path:
    """A 1x1 all-foreground PNG read in place of a missing mask, written once into the private cache folder
    (`private_cache_dir`), never under a fixed name in the shared temp dir."""
    path = private_cache_dir() / "placeholder-mask.png"
    if not path.is_file():
        from PIL import Image

        write_atomically(path, lambda handle: Image.new("L", (1, 1), 255).save(handle, format="PNG"))
    return path


def mask_table(dataset: DatasetSpec) -> MaskTable | None:
    """Mask file per sample of a folder/file-list dataset (None without a mask root)."""
    if dataset.mask_root is None or dataset.kind == "webdataset":
        return None
    placeholder = str(placeholder_mask())
    paths, present = [], np.zeros(len(dataset.files), dtype=bool)
    for i, relative in enumerate(dataset.files):
        path = mask_file(dataset.mask_root, relative)
        present[i] = path.is_file()
        paths.append(str(path) if present[i] else placeholder)
    return MaskTable(paths, present)


class MaskCoverage(NamedTuple):
    """How many of a dataset's images have a saliency mask (images without one are never blended)."""

    with_mask: int
    images: int

    def __str__(self) -> str:
        return f"{self.with_mask:,} / {self.images:,} images"


def mask_coverage(dataset: DatasetSpec) -> MaskCoverage:
    """Images with a saliency mask out of all images: mask files under the mask root (folder and file-list
    datasets; one stat per image) or `.mask.png` members beside the images (WebDataset shards)."""
    if dataset.kind == "webdataset":
        with_mask = sum(1 for tar in dataset.tar_paths for _, members in scan_tar(tar)
                        if WDS_MASK_EXTENSION in members and image_member(members) is not None)
        return MaskCoverage(with_mask, dataset.num_samples)
    table = mask_table(dataset)
    return MaskCoverage(0 if table is None else int(table.present.sum()), dataset.num_samples)


def _index_mismatch(tar: Path, beside: Path, manifest: ShardManifest | None) -> str | None:
    """Why the `.idx` beside `tar` cannot be trusted to match it, or None when the set's manifest vouches
    for both: `relic-fast pack` recorded the tar's and the index's size and mtime (a stat each, no read)."""
    if manifest is None:
        return f"no {WDS_MANIFEST_FILE} beside it records that it matches {tar.name}"
    record = manifest.record(tar.name)
    if record is None or record.index_name != beside.name:
        return f"{manifest.path.name} does not list it"
    tar_info, index_info = tar.stat(), beside.stat()
    if (tar_info.st_size, tar_info.st_mtime_ns) != (record.size, record.mtime_ns):
        return (f"{tar.name}'s size or mtime differs from {manifest.path.name}'s: the tar was rewritten (or copied "
                f"without its times) after the index was written")
    if (index_info.st_size, index_info.st_mtime_ns) != (record.index_size, record.index_mtime_ns):
        return f"its size or mtime differs from {manifest.path.name}'s: it was rewritten after relic-fast pack"
    return None


def _cached_index(tar: Path, folder: Path) -> Path:
    """The index of `tar` (`write_wds_index`, the one `relic-fast pack` writes too), written once into `folder`
    (private) under a name keyed by the tar's path, size and mtime (a rewritten tar gets a new one)."""
    info = tar.stat()
    key = hashlib.sha256(f"{tar.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()).hexdigest()[:32]
    path = folder / f"{key}.idx"
    if not path.is_file():
        write_wds_index(tar, path)
    return path


def wds_indexes(tars: Sequence[Path]) -> list[Path]:
    """DALI's index of each shard (DALI would otherwise scan every tar at start-up).

    The `.idx` beside a tar is used only while the set's `manifest.json` vouches that it still matches the tar
    (`_index_mismatch`: the sizes and mtimes `relic-fast pack` recorded). Otherwise, as for a tar without one,
    an index is written into the private cache folder (`private_cache_dir`), and an `.idx` beside the tar that
    was passed over (stale after the tar was rewritten, or a third-party one nothing vouches for) is named in
    one warning line: it is never used silently."""
    folder = private_cache_dir() / INDEX_FOLDER
    folder.mkdir(mode=0o700, exist_ok=True)
    manifests: dict[Path, ShardManifest | None] = {}
    passed_over: dict[Path, str] = {}
    paths = []
    for tar in map(Path, tars):
        beside = tar.with_suffix(".idx")
        if beside.is_file():
            if tar.parent not in manifests:
                manifests[tar.parent] = read_shard_manifest(tar.parent)
            problem = _index_mismatch(tar, beside, manifests[tar.parent])
            if problem is None:
                paths.append(beside)
                continue
            passed_over.setdefault(beside, problem)
        paths.append(_cached_index(tar, folder))
    if passed_over:
        beside, problem = next(iter(passed_over.items()))
        more = f" (and {len(passed_over) - 1} more shards' .idx files)" if len(passed_over) > 1 else ""
        warnings.warn(f"{beside}: not used, {problem}{more}; reading an index written into {folder} instead",
                      stacklevel=2)
    return paths


def wds_index(tar: Path) -> Path:
    """DALI's index of one shard (`wds_indexes`): the `.idx` beside it while it still matches, else a private one."""
    return wds_indexes([tar])[0]


def _sharding(plan: ReadPlan, name: str) -> dict:
    """Reader arguments shared by every reader of a plan (same slice, last sample repeated to pad)."""
    return dict(shard_id=plan.shard_id, num_shards=plan.num_shards, stick_to_shard=True,
                pad_last_batch=True, name=name)


def _read_files(plan: ReadPlan, name: str) -> Encoded:
    """Folder/file list: an image reader and, in lockstep, a mask reader whose label is `has_mask`."""
    ds = plan.dataset
    files = [str(ds.root / ds.files[i]) for i in plan.samples]
    labels = [int(ds.labels[i]) for i in plan.samples]
    images, label = fn.readers.file(files=files, labels=labels, **_sharding(plan, name))
    if plan.masks is None:
        return Encoded(images, label, None, None)
    mask_files = [plan.masks.paths[i] for i in plan.samples]
    present = [int(plan.masks.present[i]) for i in plan.samples]
    mask_bytes, has_mask = fn.readers.file(files=mask_files, labels=present, **_sharding(plan, f"{name}_masks"))
    return Encoded(images, label, mask_bytes, has_mask[0] == 1)


def ascii_label(text):
    """Parse a `.cls` member (ASCII digits, maybe a trailing newline) into an int32 (1,) label; -1 if empty."""
    width = 12
    padded = fn.pad(text, axes=[0], shape=[width], fill_value=0)
    digit = fn.cast(padded, dtype=types.INT32) - 48
    is_digit = (digit >= 0) & (digit <= 9)
    count = fn.reductions.sum(fn.cast(is_digit, dtype=types.INT32))
    position = types.Constant(np.arange(width, dtype=np.int32))
    power = fn.cast(count - 1 - position, dtype=types.FLOAT)
    weight = fn.cast(is_digit, dtype=types.FLOAT) * (10.0 ** power)
    value = fn.reductions.sum(fn.cast(digit, dtype=types.FLOAT) * weight)
    label = fn.cast(value, dtype=types.INT32) - fn.cast(count == 0, dtype=types.INT32)  # cast rounds
    return fn.reshape(label, shape=[1])


def _read_webdataset(plan: ReadPlan, name: str) -> Encoded:
    """WebDataset: shards in the epoch's order, image/label/mask from the same tar sample."""
    ds = plan.dataset
    tars = [ds.tar_paths[i] for i in plan.samples]
    ext = [";".join(WDS_IMAGE_EXTENSIONS), WDS_LABEL_EXTENSION]
    if plan.read_wds_masks:
        ext.append(WDS_MASK_EXTENSION)
    start, end = shard_bounds(ds.num_samples, plan.shard_id, plan.num_shards)
    outputs = fn.readers.webdataset(
        paths=[str(t) for t in tars], index_paths=[str(p) for p in wds_indexes(tars)], ext=ext,
        missing_component_behavior="empty", dtypes=[types.UINT8] * len(ext),
        random_shuffle=plan.shuffle, initial_fill=max(1, min(WDS_BUFFER, end - start)),
        seed=plan.reader_seed, **_sharding(plan, name))
    labels = ascii_label(outputs[1])
    if not plan.read_wds_masks:
        return Encoded(outputs[0], labels, None, None)
    mask_bytes = outputs[2]
    return Encoded(outputs[0], labels, mask_bytes, mask_bytes.shape()[0] > 0)


def read_encoded(plan: ReadPlan, name: str = READER_NAME) -> Encoded:
    """The readers of `plan` inside a pipeline definition."""
    if plan.dataset.kind == "webdataset":
        return _read_webdataset(plan, name)
    return _read_files(plan, name)


def sample_sources(dataset: DatasetSpec, masks: MaskTable | None, samples) -> list[str]:
    """Files behind folder/file-list `samples` (image paths, then their real masks), for validation."""
    sources = []
    for i in dict.fromkeys(int(i) for i in samples):
        sources.append(str(dataset.root / dataset.files[i]))
        if masks is not None and masks.present[i]:
            sources.append(masks.paths[i])
    return sources


def wds_sources(plan: ReadPlan) -> list[str]:
    """`shard.tar:member` of every image (and mask) in this rank's slice of a WebDataset plan."""
    ds = plan.dataset
    members = []
    for t in plan.samples:
        for _, parts in scan_tar(ds.tar_paths[t]):
            image = image_member(parts)
            if image is not None:
                names = [image.name] + ([parts[WDS_MASK_EXTENSION].name] if WDS_MASK_EXTENSION in parts else [])
                members.append([f"{ds.tar_paths[t]}:{n}" for n in names])
    start, end = shard_bounds(len(members), plan.shard_id, plan.num_shards)
    return [source for group in members[start:end] for source in group]
