"""The peer rows: the same encoder, batch and step budget trained by lightly's SimCLR or BYOL, probed like
the rest.

A reader should see RELICv2 next to implementations nobody here wrote. lightly (an optional extra:
`pip install 'relic-fast[peer]'`) supplies each method's views, heads and loss: SimCLR
(`SimCLRTransform` with its small-image settings, colour-jitter strength 0.5 and no blur; the projection
head; NT-Xent) and BYOL (`BYOLTransform`'s two asymmetric views without blur; projection and prediction
heads; a momentum target network whose EMA follows lightly's cosine schedule from 0.99 to 1; the
negative cosine similarity, symmetrized). The optimiser is lightly's CIFAR-10 benchmark's for both (SGD,
momentum 0.9, weight decay 5e-4, lr 0.06 * batch / 128, cosine). Only the geometry follows the RELICv2
recipe: the encoder (as the trainer builds it for the seed), the view size, crop area and flip probability
of the large views (`views.flip_p = 0` on digits, where a mirrored digit is another shape), the head
sizes (`model.projector_hidden`, `model.embedding_dim`, `model.predictor_hidden`), `train.batch_size` and
the pretraining step count. Without lightly the rows are skipped (`lightly_available`).
"""

from __future__ import annotations

import copy
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from relic_fast.config import Config
from relic_fast.evaluation.runner import evaluate_encoder, random_init_encoder
from relic_fast.experiments.progress import StepProgress
from relic_fast.run_plan import resolve_plan

BASE_LR = 0.06
"""lightly's CIFAR-10 benchmark lr per 128 images."""

WEIGHT_DECAY = 5e-4
"""lightly's CIFAR-10 benchmark weight decay."""


def lightly_available() -> bool:
    """Whether the optional `lightly` package can be imported."""
    return importlib.util.find_spec("lightly") is not None


def view_settings(config: Config) -> dict[str, Any]:
    """The recipe's geometry in lightly's transform arguments: size, smallest crop area, flip probability,
    normalization; no blur (32 px images)."""
    views = config.views
    return dict(input_size=views.large_size, min_scale=views.large_area[0], hf_prob=views.flip_p,
                gaussian_blur=0.0, normalize={"mean": list(views.mean), "std": list(views.std)})


def simclr_transform(config: Config):
    """Two SimCLR views (lightly's small-image colour-jitter strength 0.5)."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(cj_strength=0.5, **view_settings(config))


def byol_transform(config: Config):
    """BYOL's two asymmetric views (the second with solarization), as lightly defines them."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    return BYOLTransform(view_1_transform=BYOLView1Transform(**view_settings(config)),
                         view_2_transform=BYOLView2Transform(**view_settings(config)))


class SimCLRModel(nn.Module):
    """Encoder + lightly's SimCLR projection head; `loss(a, b)` is NT-Xent over the two views."""

    def __init__(self, encoder: nn.Module, config: Config, total_steps: int):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.encoder = encoder
        self.head = SimCLRProjectionHead(encoder.feature_dim, config.model.projector_hidden,
                                         config.model.embedding_dim)
        self.criterion = NTXentLoss()

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor, step: int) -> torch.Tensor:
        return self.criterion(self.head(self.encoder(view_a)), self.head(self.encoder(view_b)))


class BYOLModel(nn.Module):
    """Encoder + lightly's BYOL projection and prediction heads, and a momentum copy of encoder and projector
    updated before each step (`loss(a, b, step)`: the symmetrized negative cosine similarity)."""

    def __init__(self, encoder: nn.Module, config: Config, total_steps: int):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        model = config.model
        self.encoder = encoder
        self.projector = BYOLProjectionHead(encoder.feature_dim, model.projector_hidden, model.embedding_dim)
        self.predictor = BYOLPredictionHead(model.embedding_dim, model.predictor_hidden, model.embedding_dim)
        self.target_encoder, self.target_projector = copy.deepcopy(encoder), copy.deepcopy(self.projector)
        deactivate_requires_grad(self.target_encoder)
        deactivate_requires_grad(self.target_projector)
        self.criterion = NegativeCosineSimilarity()
        self.total_steps = total_steps

    def loss(self, view_a: torch.Tensor, view_b: torch.Tensor, step: int) -> torch.Tensor:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        tau = cosine_schedule(step, self.total_steps, 0.99, 1.0)
        update_momentum(self.encoder, self.target_encoder, m=tau)
        update_momentum(self.projector, self.target_projector, m=tau)
        online_a, online_b = (self.predictor(self.projector(self.encoder(v))) for v in (view_a, view_b))
        with torch.no_grad():
            target_a, target_b = (self.target_projector(self.target_encoder(v)) for v in (view_a, view_b))
        return 0.5 * (self.criterion(online_a, target_b) + self.criterion(online_b, target_a))


@dataclass(frozen=True)
class PeerMethod:
    """A lightly method: its two-view transform and its model (which owns the loss)."""

    name: str
    transform: Callable[[Config], Any]
    model: type[nn.Module]


PEER_METHODS = {"SimCLR": PeerMethod("SimCLR", simclr_transform, SimCLRModel),
                "BYOL": PeerMethod("BYOL", byol_transform, BYOLModel)}
"""The lightly methods a peer row may run, by name."""


def peer_loader(config: Config, data_root: Path, method: str = "SimCLR") -> torch.utils.data.DataLoader:
    """Shuffled batches of `method`'s two views of the train split (torchvision ImageFolder, PIL)."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(Path(data_root) / "train"), transform=PEER_METHODS[method].transform(config))
    generator = torch.Generator().manual_seed(config.train.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=min(config.train.batch_size, len(dataset)),
                                       shuffle=True, drop_last=True, generator=generator)


def train_peer(model: nn.Module, loader, *, steps: int, batch_size: int, device: torch.device,
               progress: StepProgress | None = None) -> None:
    """`steps` SGD steps of `model.loss` on `loader`'s view pairs (lightly's CIFAR-10 optimiser, fp32)."""
    model.to(device).train()
    peak = BASE_LR * batch_size / 128
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=peak, momentum=0.9, weight_decay=WEIGHT_DECAY)
    step = 0
    while step < steps:
        for (view_a, view_b), _ in loader:
            for group in optimizer.param_groups:
                group["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = model.loss(view_a.to(device), view_b.to(device), step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if progress is not None:
                progress.step(loss)
            if step == steps:
                break


def peer_reference(config: Config, data_root: Path, *, steps: int, method: str = "SimCLR",
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """lightly's `method` on the seed's pretraining encoder for `steps` steps, then the experiment's probe."""

    encoder = random_init_encoder(config, zero_init_residual=config.model.zero_init_residual)
    loader = peer_loader(config, data_root, method)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        model = PEER_METHODS[method].model(encoder, config, steps)
        progress = StepProgress(f"lightly {method} (seed {config.train.seed})", steps,
                                batch_size=loader.batch_size, log=log)
        started = time.perf_counter()
        train_peer(model, loader, steps=steps, batch_size=loader.batch_size,
                   device=resolve_plan(config).torch_device, progress=progress)
        train_s = round(time.perf_counter() - started, 1)
    result = evaluate_encoder(encoder.eval(), config, data_root)
    result.update(steps=steps, method=f"lightly {method}", base_lr=BASE_LR, weight_decay=WEIGHT_DECAY,
                  train_s=train_s)
    return result
