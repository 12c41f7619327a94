"""Frozen-encoder feature extraction, shared by the kNN monitor and linear evaluation.

The encoder runs in eval mode (BatchNorm uses its running statistics and never updates them)
under `torch.no_grad`, optionally under autocast; its previous train/eval mode is restored after,
so the trainer's kNN monitor can call this in the middle of pretraining.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device | str, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Autocast for `precision` ("bf16", "fp16") on `device`'s type, or a no-op for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of fp32, bf16, fp16; got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Put `module` in eval mode for the block and restore its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def encode(encoder: nn.Module, images: torch.Tensor, device: torch.device | str,
           precision: str = "fp32") -> torch.Tensor:
    """Pooled float32 features of one batch of images (moved to `device`, channels-last), no grad.

    The caller puts the encoder in eval mode (see `frozen`).
    """
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast_context(device, precision):
        features = encoder(images)
    return features.float().flatten(1)


def extract_features(encoder: nn.Module, loader: Iterable, device: torch.device | str, *,
                     precision: str = "fp32", storage_device: torch.device | str = "cpu",
                     start: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
                     on_batch: Callable[[list[torch.Tensor], list[torch.Tensor]], None] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, F) float32 and labels (N,) int64 of one pass over `loader`'s (images, labels).

    Encoder frozen (eval mode, no grad); results gathered on `storage_device` (CPU by default, so
    a large dataset's features do not take accelerator memory). `start`: (features, labels) lists
    of the batches a stopped pass already did (the loader restored to go on after them);
    `on_batch(features, labels)` is called with the lists so far after every batch.
    """
    features, labels = (list(start[0]), list(start[1])) if start else ([], [])
    with frozen(encoder):
        for images, batch_labels in loader:
            features.append(encode(encoder, images, device, precision).to(storage_device))
            labels.append(torch.as_tensor(batch_labels).flatten().long().to(storage_device))
            if on_batch is not None:
                on_batch(features, labels)
    if not features:
        raise ValueError("the loader yielded no batches")
    return torch.cat(features), torch.cat(labels)
