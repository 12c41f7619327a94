"""The batch type the loaders hand to torch, and view normalization: torch only, no DALI.

Kept apart from `loader` (which loads DALI's torch plugin) so that the training step, and anything
else that only consumes batches, imports without DALI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class ViewBatch:
    """One step's views: `large` (L*B, 3, H, W) and `small` (S*B, 3, h, w), view-major (rows
    v*B..(v+1)*B-1 are view v of samples 0..B-1), channels-last; `labels` (B,) int64, -1 unknown.
    `normalized` is False for uint8 pixels in [0, 255], what the DALI loaders hand over: the trainer
    normalizes them on its device (`relic_fast.step.prepare_views`); True for views a feed normalized
    itself (the torchvision baseline of the benchmarks normalizes in its workers, with `normalize_views`)."""

    large: torch.Tensor
    small: torch.Tensor | None
    labels: torch.Tensor
    normalized: bool
    stats: torch.Tensor | None = None
    """Debug pipelines only: (B, L+S, F) per view, each augmentation's own columns: crop window, decisions,
    drawn parameters (the F names: `pretrain.STATS_FIELDS`)."""


def normalize_views(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(x / 255 - mean) / std per channel of NCHW `x` (uint8 or float pixels in [0, 255]), as `dtype`.

    The torch side's one normalization: the trainer's (`relic_fast.step.prepare_views`) and the torchvision
    baseline's, so both feed the network the same values. Computed in float32 and cast once; elementwise ops
    keep `x`'s channels-last layout."""
    # one fill per channel on x's device: torch.tensor(list, device=cuda) would copy from pageable host
    # memory, which synchronizes the CUDA stream on every step (tests/relic_fast/test_meta_device.py)
    scale = torch.stack([torch.full((), 1.0 / (255.0 * s), device=x.device) for s in std]).view(1, 3, 1, 1)
    shift = torch.stack([torch.full((), m / s, device=x.device) for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    return (x.to(torch.float32) * scale - shift).to(dtype)
