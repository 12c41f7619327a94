"""The monitor as a validator the trainer is handed (it never imports evaluation code itself): kNN top-1 of
the online encoder on the val split, and the top-1 of any head the trainer passes (the online probe).

The trainer calls `should_validate(epochs_done)` at each epoch's end and, when true, `validate(...)`; the
validator owns its frequency and settings, as torchtitan's `components/validate.py` owns them.

Every rank takes part, so none idles inside a collective while rank 0 works (NCCL's watchdog fires after
10 minutes): each rank extracts the features of its own shard of the train and val splits (no collective
while it does, so a rank that fails or stops early cannot leave the others waiting inside one), then the
val features are all-gathered, each rank finds every val row's k nearest neighbours in its train shard,
and those candidates are all-gathered and merged: the same neighbours, and the same result on every
rank, as one process over the whole split. `should_stop` is polled between batches, so a stop signal
ends the pass within a batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dali_pipelines.dataset import DatasetSpec
from dali_pipelines.loader import build_eval_loader
from dali_pipelines.readers import shard_bounds
from dali_pipelines.recipe import DataConfig
from relic_fast.config import Config, EvalConfig
from relic_fast.devices import dali_device_for
from relic_fast.distributed import World, all_gather_rows
from relic_fast.evaluation.features import encode, frozen
from relic_fast.evaluation.knn import knn_neighbours, knn_vote
from relic_fast.evaluation.protocol import check_same_classes, num_classes_of
from relic_fast.loop import MonitorInterrupted


@dataclass(frozen=True)
class KnnValidator:
    """kNN top-1 of the online encoder (and top-1 of the given heads) on the val split every `every_epochs` epochs."""

    every_epochs: int
    eval_cfg: EvalConfig
    data_cfg: DataConfig
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_config(cls, config: Config) -> "KnnValidator | None":
        """The validator `train.knn_every_epochs` asks for, or None when it is 0."""
        if not config.train.knn_every_epochs:
            return None
        return cls(config.train.knn_every_epochs, config.eval, config.data, config.views.mean, config.views.std)

    def should_validate(self, epochs_done: int) -> bool:
        """Whether the epoch that just ended is one to validate after."""
        return epochs_done > 0 and epochs_done % self.every_epochs == 0

    def validate(self, encoder: nn.Module, *, train_dataset: DatasetSpec, val_dataset: DatasetSpec, world: World,
                 heads: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 should_stop: Callable[[], bool] = lambda: False,
                 agree: Callable[[bool], bool] = lambda failed_here: not failed_here) -> dict[str, float]:
        """{"knn_top1": percent, <head name>: percent, ...} on the val split; every rank calls it and gets the
        same numbers. Raises `MonitorInterrupted` when `should_stop()` turns true during extraction.

        `agree(failed_here)` is called by every rank between its local extraction and the first collective, and
        says whether every rank got there (no stop signal, no failure): ranks that gave up early and ranks that
        finished meet there, so none waits inside a gather that another will never enter."""
        error = None
        try:
            check_same_classes(train_dataset, "val", val_dataset)
            train_features, train_labels = self._shard_features(encoder, train_dataset, world, should_stop)
            val_features, val_labels = self._shard_features(encoder, val_dataset, world, should_stop)
        except MonitorInterrupted:
            pass
        except Exception as err:  # noqa: BLE001 - reported after the agreement, so the other ranks hear of it
            error = err
        if not agree(error is not None):
            if error is not None:
                raise error
            raise MonitorInterrupted()
        val_features = all_gather_rows(val_features, world)
        val_labels = all_gather_rows(val_labels, world)
        k = self.eval_cfg.knn_k
        similarities, labels = knn_neighbours(train_features, train_labels, val_features, k=k)
        if world.distributed:  # every rank's k best candidates, side by side: (num_val, world * k)
            similarities = all_gather_rows(similarities.T.contiguous(), world).T
            labels = all_gather_rows(labels.T.contiguous(), world).T
        predicted = knn_vote(similarities, labels, k=k, temperature=self.eval_cfg.knn_temperature,
                             num_classes=num_classes_of(train_dataset))
        metrics = {"knn_top1": top1(predicted, val_labels)}
        for name, head in (heads or {}).items():
            with torch.no_grad():
                metrics[name] = top1(head(val_features).argmax(dim=1), val_labels)
        return metrics

    def _shard_features(self, encoder: nn.Module, dataset: DatasetSpec, world: World,
                        should_stop: Callable[[], bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of this rank's slice of `dataset` (val-style transform, dataset order) on the
        device, with no collective; the loader's padding of a short slice is cut off."""
        data_cfg = dataclasses.replace(self.data_cfg, drop_last=False, shuffle=False)
        loader = build_eval_loader(dataset, image_size=self.eval_cfg.image_size,
                                   batch_size=self.eval_cfg.linear_batch_size, train=False, data=data_cfg,
                                   shard_id=world.rank, num_shards=world.world_size,
                                   device_id=dali_device_for(data_cfg.device, world.device),
                                   mean=self.mean, std=self.std)
        features, labels = [], []
        with frozen(encoder):
            for images, batch_labels in loader:
                if should_stop():
                    raise MonitorInterrupted()
                features.append(encode(encoder, images, world.device))
                labels.append(torch.as_tensor(batch_labels).flatten().long().to(world.device))
        start, end = shard_bounds(dataset.num_samples, world.rank, world.world_size)
        size = end - start
        if not features:
            return torch.zeros(0, encoder.feature_dim, device=world.device), torch.zeros(0, dtype=torch.long,
                                                                                          device=world.device)
        return torch.cat(features)[:size], torch.cat(labels)[:size]


def top1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of `predicted` equal to `labels` (NaN for an empty split)."""
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * (predicted.to(labels.device) == labels).float().mean().item()
