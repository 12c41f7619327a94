"""The kNN monitor as a validator the trainer is handed (it never imports evaluation code itself).

The trainer calls `should_validate(epochs_done)` at each epoch's end and, when true, `validate(...)`
with the online encoder; the validator owns its frequency and its settings, as torchtitan's
`components/validate.py` owns them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dali_pipelines.dataset import DatasetSpec, resolve_dataset
from dali_pipelines.recipe import DataConfig
from relic_fast.config import Config, EvalConfig
from relic_fast.evaluation.protocol import knn_eval


@dataclass(frozen=True)
class KnnValidator:
    """kNN top-1 of the online encoder on the labelled val split every `every_epochs` epochs."""

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

    def validate(self, encoder: nn.Module, *, train_dataset: DatasetSpec, val_root: Path,
                 device: torch.device) -> dict[str, float]:
        """{"knn_top1": percent}: val features voted by their k nearest train features."""
        accuracy = knn_eval(encoder, train_dataset=train_dataset, val_dataset=resolve_dataset(str(val_root)),
                            eval_cfg=self.eval_cfg, data_cfg=self.data_cfg, device=device, mean=self.mean,
                            std=self.std)
        return {"knn_top1": accuracy}
