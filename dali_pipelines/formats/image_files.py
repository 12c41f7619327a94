"""What the formats whose samples are image files share (folder tree, file list, flat folder): each sample
is `root / files[i]` with `labels[i]`, its saliency mask a file of the mask tree (`base.mask_file`).

Their readers get an explicit, ordered list of files: the rank's seeded sample lists (`readers.rank_samples`),
so a pipeline may read several epochs back to back (`chunkable`). Image and mask come from two
`fn.readers.file` fed the same ordered list (same length, no DALI shuffling): sample i of both is the same
image.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dali_pipelines.formats.base import DatasetError, DatasetFormat, DatasetSpec, MaskCoverage, MaskTable, mask_file
from dali_pipelines.private_cache import placeholder_mask
from dali_pipelines.readers import Encoded, ReadPlan, sharding


class ImageFiles(DatasetFormat):
    """The part of a format that reads image files one by one; a subclass only finds and lists them
    (`detects`, `resolve`)."""

    image_files = True
    chunkable = True

    def read_encoded(self, plan: ReadPlan, name: str) -> Encoded:
        """An image reader over the plan's files and, in lockstep, a mask reader whose label is `has_mask`."""
        from nvidia.dali import fn  # here: listing a dataset imports no DALI (the trainer's step and plan list one)

        ds = plan.dataset
        files = [str(ds.root / ds.files[i]) for i in plan.samples]
        labels = [int(ds.labels[i]) for i in plan.samples]
        images, label = fn.readers.file(files=files, labels=labels, **sharding(plan, name))
        masks = ds.mask_table if plan.masks else None
        if masks is None:
            return Encoded(images, label, None, None)
        mask_files = [masks.paths[i] for i in plan.samples]
        present = [int(masks.present[i]) for i in plan.samples]
        mask_bytes, has_mask = fn.readers.file(files=mask_files, labels=present, **sharding(plan, f"{name}_masks"))
        return Encoded(images, label, mask_bytes, has_mask[0] == 1)

    def mask_table(self, spec: DatasetSpec) -> MaskTable | None:
        """The mask file of each sample under the mask root (None without one); one stat per image."""
        if spec.mask_root is None:
            return None
        placeholder = str(placeholder_mask())
        paths, present = [], np.zeros(len(spec.files), dtype=bool)
        for i, relative in enumerate(spec.files):
            path = mask_file(spec.mask_root, relative)
            present[i] = path.is_file()
            paths.append(str(path) if present[i] else placeholder)
        return MaskTable(paths, present)

    def mask_coverage(self, spec: DatasetSpec) -> MaskCoverage:
        """Mask files found under the mask root (`DatasetSpec.mask_table`)."""
        table = spec.mask_table
        return MaskCoverage(0 if table is None else int(table.present.sum()), spec.num_samples)

    def can_read_masks(self, spec: DatasetSpec) -> bool:
        return spec.mask_root is not None

    def missing_masks(self, spec: DatasetSpec) -> str:
        if spec.mask_root is None:
            return f"{spec.root} has no mask folder"
        return f"{spec.mask_root} holds no mask for any of its images"

    def sources(self, plan: ReadPlan, in_flight: np.ndarray) -> list[str]:
        """The image files of `in_flight`, each followed by its real mask when masks are read."""
        ds = plan.dataset
        masks = ds.mask_table if plan.masks else None
        sources = []
        for i in dict.fromkeys(int(i) for i in in_flight):
            sources.append(str(ds.root / ds.files[i]))
            if masks is not None and masks.present[i]:
                sources.append(masks.paths[i])
        return sources

    def relabel(self, spec: DatasetSpec, mapping: dict[int, int], class_names: list[str],
                class_sources: list[str], keep_unmapped: bool) -> DatasetSpec:
        keep = [i for i, label in enumerate(spec.labels) if keep_unmapped or label in mapping]
        files = [spec.files[i] for i in keep]
        labels = [mapping.get(spec.labels[i], -1) for i in keep]
        if not files:
            raise DatasetError(f"{spec.root}: no images left of the classes asked for")
        return dataclasses.replace(spec, files=files, labels=labels, class_names=class_names,
                                   class_sources=class_sources, num_samples=len(files))

