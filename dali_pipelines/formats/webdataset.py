"""WebDataset shards: a folder of `.tar` shards (or one `.tar`), samples `<key>.jpg|.jpeg|.png`, optional
`<key>.cls` (ASCII label) and `<key>.mask.png` (saliency mask); the set's class names and manifest beside the
shards (`shards`).

Image, label and mask come from the same tar sample. An epoch permutes the shards (not the samples), DALI
shards the samples over the ranks (`shard_id`/`num_shards`, `stick_to_shard`) and a seeded buffer shuffle mixes
samples within a rank's slice: one pipeline per epoch (not `chunkable`).
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path

import numpy as np

from dali_pipelines.formats.base import DatasetError, DatasetFormat, DatasetSpec, MaskCoverage, numbered_names
from dali_pipelines.formats.shard_index import wds_indexes
from dali_pipelines.formats.shards import (WDS_CLASSES_FILE, WDS_IMAGE_EXTENSIONS, WDS_LABEL_EXTENSION,
                                           WDS_MASK_EXTENSION, check_shard_manifest, image_member,
                                           read_shard_classes, scan_tar)
from dali_pipelines.readers import Encoded, ReadPlan, shard_bounds, sharding

WDS_BUFFER = 1024
"""Samples in the WebDataset reader's shuffle buffer."""


class WebDataset(DatasetFormat):
    """Shards: samples packed in tars (module docstring)."""

    name = "webdataset"
    description = "WebDataset shards"
    image_files = False
    chunkable = False

    def detects(self, path: Path, entries: list[os.DirEntry] | None) -> bool:
        if entries is None:
            return path.suffix == ".tar"
        return any(e.name.endswith(".tar") and e.is_file() for e in entries)

    def resolve(self, path: Path, *, masks: str, labels: str) -> DatasetSpec:
        """Count the samples that have an image and read their `.cls` labels (-1 when absent); class names
        from `classes.json` beside the shards (a label beyond them is an error). The shards are first checked
        against the set's manifest (`check_shard_manifest`), their sample counts while counting."""
        tar_paths = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix == ".tar")
        if not tar_paths:
            raise DatasetError(f"{path}: no .tar shards found")
        root = path if path.is_dir() else path.parent
        manifest = check_shard_manifest(root, tar_paths)
        named = read_shard_classes(root)
        indices = []
        for tar_path in tar_paths:
            counted_before = len(indices)
            indices += _shard_labels(tar_path, named, root)
            recorded = manifest.record(tar_path.name).samples if manifest is not None else None
            if recorded is not None and len(indices) - counted_before != recorded:
                raise DatasetError(f"{tar_path}: {len(indices) - counted_before} image samples, but {manifest.path} "
                                   f"records {recorded}: the shard was changed; copy the set again or pack it again")
        if not indices:
            raise DatasetError(f"{root}: the WebDataset shards hold no image samples")
        names = named if named is not None else numbered_names(indices)
        return DatasetSpec(self, root, [], indices, tar_paths, None, names, len(indices),
                           [f"{root / WDS_CLASSES_FILE}: class {i}" for i in range(len(names))] if named else [])

    def read_encoded(self, plan: ReadPlan, name: str) -> Encoded:
        """Shards in the epoch's order, image/label/mask from the same tar sample."""
        from nvidia.dali import fn, types  # here: listing a dataset imports no DALI (the trainer's step lists one)

        ds = plan.dataset
        tars = [ds.tar_paths[i] for i in plan.samples]
        ext = [";".join(WDS_IMAGE_EXTENSIONS), WDS_LABEL_EXTENSION]
        if plan.masks:
            ext.append(WDS_MASK_EXTENSION)
        start, end = shard_bounds(ds.num_samples, plan.shard_id, plan.num_shards)
        outputs = fn.readers.webdataset(
            paths=[str(t) for t in tars], index_paths=[str(p) for p in wds_indexes(tars)], ext=ext,
            missing_component_behavior="empty", dtypes=[types.UINT8] * len(ext),
            random_shuffle=plan.shuffle, initial_fill=max(1, min(WDS_BUFFER, end - start)),
            seed=plan.reader_seed, **sharding(plan, name))
        labels = ascii_label(outputs[1])
        if not plan.masks:
            return Encoded(outputs[0], labels, None, None)
        mask_bytes = outputs[2]
        return Encoded(outputs[0], labels, mask_bytes, mask_bytes.shape()[0] > 0)

    def mask_coverage(self, spec: DatasetSpec) -> MaskCoverage:
        """`.mask.png` members beside the images."""
        with_mask = sum(1 for tar in spec.tar_paths for _, members in scan_tar(tar)
                        if WDS_MASK_EXTENSION in members and image_member(members) is not None)
        return MaskCoverage(with_mask, spec.num_samples)

    def can_read_masks(self, spec: DatasetSpec) -> bool:
        return True  # any sample may hold a .mask.png member; one without reads as no mask

    def missing_masks(self, spec: DatasetSpec) -> str:
        return f"the shards in {spec.root} hold no .mask.png members"

    def epoch_items(self, spec: DatasetSpec) -> int:
        return len(spec.tar_paths)  # an epoch permutes the shards

    def sources(self, plan: ReadPlan, in_flight: np.ndarray) -> list[str]:
        """`shard.tar:member` of every image (and mask) in this rank's slice of the plan (DALI shards the
        samples, so `in_flight` does not apply)."""
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

    def relabel(self, spec: DatasetSpec, mapping: dict[int, int], class_names: list[str],
                class_sources: list[str], keep_unmapped: bool) -> DatasetSpec:
        """Only new class names: the shards' class indices cannot be changed or filtered when read."""
        if any(old != new for old, new in mapping.items()) or (not keep_unmapped and any(
                label not in mapping for label in spec.labels)):
            raise DatasetError(f"{spec.root}: the shards' class indices cannot be changed or filtered when read "
                               f"(the readers stream whole shards); pack the split with the train split's classes")
        return dataclasses.replace(spec, class_names=class_names, class_sources=class_sources)

    def unlabelled_reason(self, spec: DatasetSpec, *, brief: bool = False) -> str:
        return "its shards hold no .cls labels"


def _shard_labels(path: Path, named: list[str] | None, root: Path) -> list[int]:
    """The label of each image sample of the shard at `path` (-1 without a `.cls` member); a label beyond the
    `named` classes is an error."""
    labels = []
    with tarfile.open(path) as tar:
        for _, members in scan_tar(path):
            if image_member(members) is None:
                continue
            cls = members.get(WDS_LABEL_EXTENSION)
            text = tar.extractfile(cls).read().decode("ascii", "replace").strip() if cls else ""
            labels.append(int(text) if text.lstrip("-").isdigit() else -1)
            if named is not None and labels[-1] >= len(named):
                raise DatasetError(f"{path}: sample {image_member(members).name} has label {labels[-1]}, but "
                                   f"{root / WDS_CLASSES_FILE} names {len(named)} classes")
    return labels


def ascii_label(text):
    """Parse a `.cls` member (ASCII digits, maybe a trailing newline) into an int32 (1,) label; -1 if empty."""
    from nvidia.dali import fn, types

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
