"""The peer row: the same encoder, batch and step budget trained by lightly's SimCLR, probed like the rest.

A reader should see RELICv2 next to an implementation nobody here wrote. lightly (an optional extra:
`pip install 'relic-fast[peer]'`) supplies the views (`SimCLRTransform`, its small-image settings:
colour-jitter strength 0.5, no blur), the projection head and the NT-Xent loss; the optimiser is
lightly's CIFAR-10 benchmark's (SGD, momentum 0.9, weight decay 5e-4, lr 0.06 * batch / 128, cosine).
Only the geometry follows the RELICv2 recipe: the encoder (as the trainer builds it for the seed), the
view size, crop area and flip probability of the large views (`views.flip_p = 0` on digits, where a
mirrored digit is another shape), `train.batch_size` and the pretraining step count.
Without lightly the row is skipped (`lightly_available`).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relic_fast.config import Config
from relic_fast.evaluation.runner import evaluate_encoder, random_init_encoder
from relic_fast.run_plan import resolve_plan

METHOD = "SimCLR"
"""The lightly method of the peer row."""

BASE_LR = 0.06
"""lightly's CIFAR-10 benchmark lr per 128 images."""

WEIGHT_DECAY = 5e-4
"""lightly's CIFAR-10 benchmark weight decay."""


def lightly_available() -> bool:
    """Whether the optional `lightly` package can be imported."""
    return importlib.util.find_spec("lightly") is not None


def peer_loader(config: Config, data_root: Path) -> torch.utils.data.DataLoader:
    """Shuffled batches of two lightly SimCLR views of the train split (torchvision ImageFolder, PIL)."""
    from lightly.transforms import SimCLRTransform
    from torchvision.datasets import ImageFolder

    views = config.views
    transform = SimCLRTransform(input_size=views.large_size, min_scale=views.large_area[0], cj_strength=0.5,
                                gaussian_blur=0.0, hf_prob=views.flip_p,
                                normalize={"mean": list(views.mean), "std": list(views.std)})
    dataset = ImageFolder(str(Path(data_root) / "train"), transform=transform)
    generator = torch.Generator().manual_seed(config.train.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=min(config.train.batch_size, len(dataset)),
                                       shuffle=True, drop_last=True, generator=generator)


def train_simclr(encoder: nn.Module, loader, *, steps: int, batch_size: int, config: Config) -> nn.Module:
    """Train `encoder` with lightly's SimCLR head and NT-Xent loss for `steps` steps (fp32, CPU or CUDA)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    device = resolve_plan(config).torch_device
    head = SimCLRProjectionHead(encoder.feature_dim, config.model.projector_hidden, config.model.embedding_dim)
    model = nn.Sequential(encoder, head).to(device).train()
    criterion = NTXentLoss()
    peak = BASE_LR * batch_size / 128
    optimizer = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9, weight_decay=WEIGHT_DECAY)
    step = 0
    while step < steps:
        for (view_a, view_b), _ in loader:
            for group in optimizer.param_groups:
                group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = criterion(model(view_a.to(device)), model(view_b.to(device)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    return encoder.eval()


def peer_reference(config: Config, data_root: Path, *, steps: int) -> dict[str, Any]:
    """lightly's SimCLR on the seed's pretraining encoder for `steps` steps, then the experiment's probe."""

    encoder = random_init_encoder(config, zero_init_residual=config.model.zero_init_residual)
    loader = peer_loader(config, data_root)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        train_simclr(encoder, loader, steps=steps, batch_size=loader.batch_size, config=config)
    result = evaluate_encoder(encoder, config, data_root)
    result.update(steps=steps, method=f"lightly {METHOD}", base_lr=BASE_LR, weight_decay=WEIGHT_DECAY)
    return result
