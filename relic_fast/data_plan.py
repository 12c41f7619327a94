"""What a run reads, resolved and checked before any work: the training images (`training_dataset`: the demo
data when no path is given, less its unreadable files when `data.on_bad_file = "skip"`; the batch must fit it),
the saliency masks that `views.saliency_p` needs, and the split the monitor (kNN, online probe) scores.

A multi-day run must be the run it was asked to be: a recipe that masks backgrounds on data with no
masks stops here (exit 3) instead of training without masking, and the plan printed at the start says
how many images have a mask and which split the monitor reads (or that it is off, and why).
"""

from __future__ import annotations

import torch

from dali_pipelines.dataset import DatasetError, DatasetSpec, find_monitor_split, resolve_dataset, resolve_split
from dali_pipelines.formats.base import MaskCoverage
from dali_pipelines.validate import filter_bad_files
from relic_fast.config import Config, ConfigError, ViewsConfig
from relic_fast.demo_data import ensure_demo_dataset
from relic_fast.distributed import World


def training_dataset(config: Config, world: World) -> tuple[DatasetSpec, DatasetSpec | None]:
    """The pretraining dataset (the built-in demo data when `data.path` is empty) and the monitor's labelled
    val split, if one is found."""
    path = config.data.path
    if not path:
        if world.distributed and not world.is_main:
            torch.distributed.barrier()  # rank 0 generates the demo data once; the others then reuse it
        path = str(ensure_demo_dataset(progress=world.is_main))
        if world.distributed and world.is_main:
            torch.distributed.barrier()
    data = config.data
    dataset = resolve_dataset(path, data.format, data.masks, classes=data.classes)
    if data.on_bad_file == "skip" and dataset.format.image_files:
        dataset = without_bad_files(dataset, world, data.max_image_mb)
    val = find_monitor_split(path, data.val, data.val_labels)
    # resolved at start-up: a bad labels file or a class the train split lacks stops the run before training
    return dataset, (resolve_split(val, train=dataset, labels=data.val_labels, classes=data.classes)
                     if val is not None else None)


def without_bad_files(dataset: DatasetSpec, world: World, max_image_mb: float) -> DatasetSpec:
    """`data.on_bad_file = "skip"`: the dataset less its unreadable images (validated once, cached on disk)."""
    if world.distributed and not world.is_main:
        torch.distributed.barrier()  # rank 0 validates with a process pool; the others then hit its cache
    dataset, rejected = filter_bad_files(dataset, max_image_mb=max_image_mb)
    if world.distributed and world.is_main:
        torch.distributed.barrier()
    if rejected and world.is_main:
        path, reason = rejected[0]
        print(f"data.on_bad_file = 'skip': skipping {len(rejected)} unreadable image(s), e.g. {path} ({reason}); "
              f"`relic-fast index` lists them all")
    return dataset


def check_batch(config: Config, world_size: int, dataset: DatasetSpec) -> None:
    """The global batch must split evenly over ranks and fit the dataset."""
    batch = config.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size = {batch} does not split over {world_size} ranks; "
                          f"use a multiple of {world_size}")
    if dataset.num_samples < batch and config.data.drop_last:
        raise ConfigError(f"train.batch_size = {batch} exceeds the dataset's {dataset.num_samples} images "
                          f"({dataset.root}); lower it or set data.drop_last = false")


def check_saliency_masks(dataset: DatasetSpec, views: ViewsConfig) -> MaskCoverage | None:
    """The dataset's mask coverage when the recipe masks (`views.saliency_p > 0`), else None.

    No mask at all is a `DatasetError` naming both fixes. Partial coverage is allowed: an image without a
    mask is never blended (its views keep their background), which the plan line states with the counts. The
    mask table this builds stays on `dataset` (`DatasetSpec.mask_table`) for the loader."""
    if views.saliency_p <= 0:
        return None
    coverage = dataset.mask_coverage()
    if coverage.with_mask == 0:
        where = dataset.format.missing_masks(dataset)
        raise DatasetError(
            f"views.saliency_p = {views.saliency_p:g} masks backgrounds, but {where}. Either compute masks: "
            f"`relic-fast masks {dataset.root} --out MASKS` then `--set data.masks=MASKS`; or train without "
            f"saliency masking: `--set views.saliency_p=0`")
    return coverage


def describe_masks(coverage: MaskCoverage | None) -> str:
    """The plan's word on saliency masks: off, full coverage, or partial coverage with its counts."""
    if coverage is None:
        return "off (views.saliency_p = 0)"
    if coverage.with_mask == coverage.images:
        return f"all {coverage.images:,} images have a mask"
    return (f"{coverage} have a mask ({100.0 * coverage.with_mask / max(coverage.images, 1):.1f} %); "
            f"the others are never blended")


def describe_monitor(val: DatasetSpec | None, knn_every_epochs: int) -> str:
    """The plan's word on the monitor: the split it scores and how often, or why it is off."""
    if not knn_every_epochs:
        return "off (train.knn_every_epochs = 0)"
    if val is None:
        return "off (no val split found)"
    return f"every {knn_every_epochs} epoch(s) on {val.root} ({val.num_samples:,} images)"


def describe_probe(built: bool, asked: bool) -> str:
    """The plan's word on the online probe: on, or off and why (not asked for, or data without labels)."""
    if built:
        return "online probe on"
    return "online probe off (the training data has no labels)" if asked else "online probe off"


def data_plan_rows(config, data_path: str) -> list[tuple[str, str]]:
    """(item, value) rows of what a run of `config` on `data_path` would read: the training images, their
    saliency-mask coverage, and the monitor's split; the checks `pretrain` makes at its start, without
    stopping at the first problem (a missing mask folder is a row here, an error there)."""
    data = config.data
    dataset = resolve_dataset(data_path, data.format, data.masks, classes=data.classes)
    rows = [("training images", f"{dataset.num_samples:,} in {len(dataset.class_names)} classes "
                                f"({dataset.format.name}, {dataset.root})")]
    if config.views.saliency_p > 0:
        coverage = dataset.mask_coverage()
        masks = describe_masks(coverage) if coverage.with_mask else \
            "[red]none: pretrain stops (relic-fast masks, or views.saliency_p = 0)[/]"
    else:
        masks = describe_masks(None)
    rows.append(("saliency masks", masks))
    val_path = find_monitor_split(data_path, data.val, data.val_labels)
    val = None if val_path is None else resolve_split(val_path, train=dataset, labels=data.val_labels,
                                                      classes=data.classes)
    rows.append(("monitor", describe_monitor(val, config.train.knn_every_epochs)))
    rows.append(("online probe", "on" if config.eval.online_probe else "off"))
    return rows
