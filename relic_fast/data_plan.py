"""What a run reads besides its training images, checked before any work: the saliency masks that
`views.saliency_p` needs, and the split the monitor (kNN, online probe) scores.

A multi-day run must be the run it was asked to be: a recipe that masks backgrounds on data with no
masks stops here (exit 3) instead of training without masking, and the plan printed at the start says
how many images have a mask and which split the monitor reads (or that it is off, and why).
"""

from __future__ import annotations

from dali_pipelines.dataset import DatasetError, DatasetSpec, find_monitor_split, resolve_dataset, resolve_split
from dali_pipelines.readers import MaskCoverage, mask_coverage
from relic_fast.config import ViewsConfig


def check_saliency_masks(dataset: DatasetSpec, views: ViewsConfig) -> MaskCoverage | None:
    """The dataset's mask coverage when the recipe masks (`views.saliency_p > 0`), else None.

    No mask at all is a `DatasetError` naming both fixes. Partial coverage is allowed: an image without a
    mask is never blended (its views keep their background), which the plan line states with the counts."""
    if views.saliency_p <= 0:
        return None
    coverage = mask_coverage(dataset)
    if coverage.with_mask == 0:
        where = (f"the shards in {dataset.root} hold no .mask.png members" if dataset.kind == "webdataset"
                 else f"{dataset.root} has no mask folder" if dataset.mask_root is None
                 else f"{dataset.mask_root} holds no mask for any of its images")
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


def data_plan_rows(config, data_path: str) -> list[tuple[str, str]]:
    """(item, value) rows of what a run of `config` on `data_path` would read: the training images, their
    saliency-mask coverage, and the monitor's split; the checks `pretrain` makes at its start, without
    stopping at the first problem (a missing mask folder is a row here, an error there)."""
    data = config.data
    dataset = resolve_dataset(data_path, data.format, data.masks, classes=data.classes)
    rows = [("training images", f"{dataset.num_samples:,} in {len(dataset.class_names)} classes ({dataset.kind}, "
                                f"{dataset.root})")]
    if config.views.saliency_p > 0:
        coverage = mask_coverage(dataset)
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
