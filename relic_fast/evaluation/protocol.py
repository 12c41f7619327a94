"""Dataset-level evaluation: build the DALI eval loaders, then run linear evaluation or the kNN monitor.

These functions are what the CLI, the demo experiment and the trainer's kNN monitor call: they take
dataset descriptions (`DatasetSpec`) and config sections, and return plain dicts of percentages.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from dali_pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from relic_fast.config import EvalConfig
from relic_fast.evaluation.features import extract_features
from relic_fast.evaluation.knn import knn_accuracy
from relic_fast.evaluation.linear import (evaluate_head, fit_linear_augmented, fit_linear_on_features,
                                          scaled_lr)
from relic_fast.evaluation.logistic import fit_logistic_on_features
from dali_pipelines.loader import build_eval_loader
from relic_fast.devices import dali_device_for


def num_classes_of(dataset) -> int:
    """Number of classes of a `DatasetSpec`: its class names, else the largest label + 1."""
    if dataset.class_names:
        return len(dataset.class_names)
    if dataset.labels:
        return max(dataset.labels) + 1
    raise ValueError(f"{dataset.root}: dataset has no labels; linear evaluation and kNN need labelled data")


def check_same_classes(train_dataset, name: str, val_dataset) -> None:
    """Raise when a validation split's class folders differ from the train split's (indices would not match)."""
    if train_dataset.class_names and val_dataset.class_names and \
            list(train_dataset.class_names) != list(val_dataset.class_names):
        raise ValueError(f"split {name!r} ({val_dataset.root}) has classes {val_dataset.class_names}, "
                         f"train has {train_dataset.class_names}: class indices would not match")


def eval_loader(dataset, *, train: bool, eval_cfg: EvalConfig, data_cfg: DataConfig,
                device: torch.device | str, seed: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The DALI eval loader over `dataset`: train=True random-resized-crop + flip, else resize + centre crop."""

    return build_eval_loader(dataset, image_size=eval_cfg.image_size, batch_size=eval_cfg.linear_batch_size,
                             train=train, data=data_cfg, seed=seed,
                             device_id=dali_device_for(data_cfg.device, torch.device(device)),
                             mean=mean, std=std)


def dataset_features(encoder: nn.Module, dataset, *, eval_cfg: EvalConfig, data_cfg: DataConfig,
                     device: torch.device | str, seed: int = 0, precision: str = "fp32",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every sample of `dataset` under the val-style transform, encoder frozen."""
    loader = eval_loader(dataset, train=False, eval_cfg=eval_cfg, data_cfg=data_cfg, device=device,
                         seed=seed, mean=mean, std=std)
    storage = device if torch.device(device).type == "cuda" else "cpu"
    return extract_features(encoder, loader, device, precision=precision, storage_device=storage)


def score_splits(encoder: nn.Module, head: nn.Module, val_datasets: dict, *, eval_cfg: EvalConfig,
                 data_cfg: DataConfig, device: torch.device | str, seed: int = 0, precision: str = "fp32",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict[str, dict[str, float]]:
    """{split: {"top1", "top5"}} of `head` on the frozen `encoder`'s val-style features of each split."""
    data_cfg = dataclasses.replace(data_cfg, drop_last=False, shuffle=False)
    common = dict(eval_cfg=eval_cfg, data_cfg=data_cfg, device=device, seed=seed, precision=precision,
                  mean=mean, std=std)
    return {name: evaluate_head(head, *dataset_features(encoder, dataset, **common))
            for name, dataset in val_datasets.items()}


def linear_eval(encoder: nn.Module, *, train_dataset, val_datasets: dict, eval_cfg: EvalConfig,
                data_cfg: DataConfig, device: torch.device | str, seed: int = 0, precision: str = "fp32",
                mean=IMAGENET_MEAN, std=IMAGENET_STD,
                log: Callable[[str], None] | None = None) -> dict:
    """Linear evaluation of a frozen `encoder`: fit on `train_dataset`, report each of `val_datasets`.

    Returns {"top1", "top5"} of the split named "val" (else the first split), "splits": {name:
    {"top1", "top5"}}, and the settings used (mode, epochs, batch, lr, sizes). All in percent.
    """
    if not val_datasets:
        raise ValueError("linear evaluation needs at least one validation split")
    data_cfg = dataclasses.replace(data_cfg, drop_last=False, shuffle=False)
    num_classes = num_classes_of(train_dataset)
    for name, dataset in val_datasets.items():
        check_same_classes(train_dataset, name, dataset)
    common = dict(eval_cfg=eval_cfg, data_cfg=data_cfg, device=device, precision=precision, mean=mean, std=std)
    encoder = encoder.to(device).to(memory_format=torch.channels_last)
    probe_info: dict = {}
    if eval_cfg.linear_mode == "logistic":
        train_features, train_labels = dataset_features(encoder, train_dataset, seed=seed, **common)
        head, probe_info = fit_logistic_on_features(train_features, train_labels, num_classes=num_classes,
                                                    l2_grid=eval_cfg.linear_l2_grid, seed=seed, device=device)
        batch = train_features.shape[0]
        feature_dim = train_features.shape[1]
    elif eval_cfg.linear_mode == "cached_features":
        train_features, train_labels = dataset_features(encoder, train_dataset, seed=seed, **common)
        batch = min(eval_cfg.linear_batch_size, train_features.shape[0])
        head = fit_linear_on_features(train_features, train_labels, num_classes=num_classes,
                                      epochs=eval_cfg.linear_epochs, batch_size=batch,
                                      base_lr=eval_cfg.linear_base_lr, seed=seed, device=device,
                                      feature_norm=eval_cfg.linear_feature_norm)
        feature_dim = train_features.shape[1]
    else:
        loader = eval_loader(train_dataset, train=True, eval_cfg=eval_cfg, data_cfg=data_cfg, device=device,
                             seed=seed, mean=mean, std=std)
        batch = min(eval_cfg.linear_batch_size, train_dataset.num_samples)
        feature_dim = encoder.feature_dim
        on_epoch = (lambda epoch, loss: log(f"linear epoch {epoch + 1}/{eval_cfg.linear_epochs}: "
                                            f"loss {loss:.4f}")) if log else None
        head = fit_linear_augmented(encoder, loader, steps_per_epoch=math.ceil(train_dataset.num_samples / batch),
                                    feature_dim=feature_dim, num_classes=num_classes,
                                    epochs=eval_cfg.linear_epochs, batch_size=batch,
                                    base_lr=eval_cfg.linear_base_lr, device=device, precision=precision,
                                    feature_norm=eval_cfg.linear_feature_norm, on_epoch=on_epoch)
    splits = score_splits(encoder, head, val_datasets, seed=seed, **common)
    headline = splits.get("val", next(iter(splits.values())))
    return {"top1": headline["top1"], "top5": headline["top5"], "splits": splits,
            "mode": eval_cfg.linear_mode, "feature_norm": eval_cfg.linear_feature_norm,
            "epochs": eval_cfg.linear_epochs, "batch_size": batch,
            "base_lr": eval_cfg.linear_base_lr, "lr": scaled_lr(eval_cfg.linear_base_lr, batch),
            "image_size": eval_cfg.image_size, "num_classes": num_classes, "feature_dim": int(feature_dim),
            "train_samples": train_dataset.num_samples,
            "val_samples": {name: d.num_samples for name, d in val_datasets.items()},
            "top5_k": min(5, num_classes), "precision": precision, "seed": seed, **probe_info}


def knn_eval(encoder: nn.Module, *, train_dataset, val_dataset, eval_cfg: EvalConfig, data_cfg: DataConfig,
             device: torch.device | str, precision: str = "fp32", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> float:
    """kNN monitor accuracy (percent): val-style features of both splits, k and T from `eval_cfg`."""
    data_cfg = dataclasses.replace(data_cfg, drop_last=False, shuffle=False)
    check_same_classes(train_dataset, "val", val_dataset)
    common = dict(eval_cfg=eval_cfg, data_cfg=data_cfg, device=device, precision=precision, mean=mean, std=std)
    train_features, train_labels = dataset_features(encoder, train_dataset, **common)
    val_features, val_labels = dataset_features(encoder, val_dataset, **common)
    return knn_accuracy(train_features, train_labels, val_features, val_labels, k=eval_cfg.knn_k,
                        temperature=eval_cfg.knn_temperature, num_classes=num_classes_of(train_dataset))
