"""DALI readers for one rank and one epoch: encoded images, labels and saliency masks, sharded and seeded.

Shuffling is ours, not DALI's: each epoch's sample order is a permutation drawn from (seed, epoch),
identical on every rank, and rank r reads the contiguous slice r of it (DALI's `shard_id` /
`num_shards` arithmetic with `stick_to_shard`). So the ranks see disjoint samples that cover the
dataset every epoch (exactly `torch.utils.data.DistributedSampler`'s contract), a run is
reproducible from its seed, and the loader always knows which files a rank reads (to name a bad
one). DALI's own `shuffle_after_epoch` uses a hard-coded seed and hides the order; its
`random_shuffle` is a buffer shuffle applied after a hidden global shuffle.
Folder and file-list datasets read image and mask through two `fn.readers.file` fed the same
ordered lists (same length, same sharding, no DALI shuffling), so sample i of both is the same
image. WebDataset shards keep image and mask in one sample; there the order permutes the shards and
a seeded DALI buffer shuffle mixes samples within the rank's slice.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types

from dali_pipelines.dataset import (WDS_IMAGE_EXTENSIONS, WDS_LABEL_EXTENSION, WDS_MASK_EXTENSION, DatasetSpec,
                                    mask_file, scan_tar)

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
class EpochPlan:
    """What one rank reads in one epoch: the dataset, the epoch's order and this rank's slice."""

    dataset: DatasetSpec
    order: np.ndarray
    """Permutation of sample indices (folder/file list) or of shard indices (webdataset)."""
    shard_id: int
    num_shards: int
    reader_seed: int
    """Seed of the WebDataset shuffle buffer (per epoch and rank)."""
    shuffle: bool
    masks: MaskTable | None
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


def placeholder_mask() -> Path:
    """A 1x1 all-foreground PNG (written once to the temp dir) read in place of a missing mask."""
    path = Path(tempfile.gettempdir()) / "relic-fast-placeholder-mask.png"
    if not path.is_file():
        from PIL import Image

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        Image.new("L", (1, 1), 255).save(tmp, format="PNG")
        os.replace(tmp, path)
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


def wds_index(tar: Path) -> Path:
    """DALI's index of a shard: `shard.idx` beside it (written by `relic-fast pack`), else one we
    write once into the temp dir (keyed by path, size and mtime) listing the samples with an image."""
    beside = tar.with_suffix(".idx")
    if beside.is_file():
        return beside
    stat = tar.stat()
    digest = hashlib.sha1(f"{tar.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    path = Path(tempfile.gettempdir()) / "relic-fast-wds-index" / f"{digest}.idx"
    if not path.is_file():
        lines = []
        for _, members in scan_tar(tar):
            if any(e in members for e in WDS_IMAGE_EXTENSIONS):
                lines.append(" ".join(f"{ext} {m.offset_data} {m.size} {m.name}" for ext, m in members.items()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"v1.2 {len(lines)}\n" + "".join(line + "\n" for line in lines))
        os.replace(tmp, path)
    return path


def _sharding(plan: EpochPlan, name: str) -> dict:
    """Reader arguments shared by every reader of a plan (same slice, last sample repeated to pad)."""
    return dict(shard_id=plan.shard_id, num_shards=plan.num_shards, stick_to_shard=True,
                pad_last_batch=True, name=name)


def _read_files(plan: EpochPlan, name: str) -> Encoded:
    """Folder/file list: an image reader and, in lockstep, a mask reader whose label is `has_mask`."""
    ds = plan.dataset
    files = [str(ds.root / ds.files[i]) for i in plan.order]
    labels = [int(ds.labels[i]) for i in plan.order]
    images, label = fn.readers.file(files=files, labels=labels, **_sharding(plan, name))
    if plan.masks is None:
        return Encoded(images, label, None, None)
    mask_files = [plan.masks.paths[i] for i in plan.order]
    present = [int(plan.masks.present[i]) for i in plan.order]
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
    label = fn.cast(value + 0.5, dtype=types.INT32) - fn.cast(count == 0, dtype=types.INT32)
    return fn.reshape(label, shape=[1])


def _read_webdataset(plan: EpochPlan, name: str) -> Encoded:
    """WebDataset: shards in the epoch's order, image/label/mask from the same tar sample."""
    ds = plan.dataset
    tars = [ds.tar_paths[i] for i in plan.order]
    ext = [";".join(WDS_IMAGE_EXTENSIONS), WDS_LABEL_EXTENSION]
    if plan.read_wds_masks:
        ext.append(WDS_MASK_EXTENSION)
    start, end = shard_bounds(ds.num_samples, plan.shard_id, plan.num_shards)
    outputs = fn.readers.webdataset(
        paths=[str(t) for t in tars], index_paths=[str(wds_index(t)) for t in tars], ext=ext,
        missing_component_behavior="empty", dtypes=[types.UINT8] * len(ext),
        random_shuffle=plan.shuffle, initial_fill=max(1, min(WDS_BUFFER, end - start)),
        seed=plan.reader_seed, **_sharding(plan, name))
    labels = ascii_label(outputs[1])
    if not plan.read_wds_masks:
        return Encoded(outputs[0], labels, None, None)
    mask_bytes = outputs[2]
    return Encoded(outputs[0], labels, mask_bytes, mask_bytes.shape()[0] > 0)


def read_encoded(plan: EpochPlan, name: str = READER_NAME) -> Encoded:
    """The readers of `plan` inside a pipeline definition."""
    if plan.dataset.kind == "webdataset":
        return _read_webdataset(plan, name)
    return _read_files(plan, name)


def shard_sources(plan: EpochPlan, first: int = 0) -> list[str]:
    """Human-readable sources this rank reads this epoch, from its `first`-th sample on: image paths
    (and their masks), or `shard.tar:member` for WebDataset. Used to find a bad file."""
    ds = plan.dataset
    if ds.kind != "webdataset":
        start, end = shard_bounds(ds.num_samples, plan.shard_id, plan.num_shards)
        sources = []
        for i in plan.order[start + first:end]:
            sources.append(str(ds.root / ds.files[i]))
            if plan.masks is not None and plan.masks.present[i]:
                sources.append(plan.masks.paths[i])
        return sources
    members = []
    for t in plan.order:
        for _, parts in scan_tar(ds.tar_paths[t]):
            image = next((parts[e] for e in WDS_IMAGE_EXTENSIONS if e in parts), None)
            if image is not None:
                names = [image.name] + ([parts[WDS_MASK_EXTENSION].name] if WDS_MASK_EXTENSION in parts else [])
                members.append([f"{ds.tar_paths[t]}:{n}" for n in names])
    start, end = shard_bounds(len(members), plan.shard_id, plan.num_shards)
    return [source for group in members[start:end] for source in group]
