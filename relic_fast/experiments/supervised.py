"""The supervised reference: the same encoder trained end-to-end with labels, for the pretraining budget.

The demo experiment compares a random-init encoder with pretrained encoders under a linear probe. This
reference asks what the labels themselves buy in the same budget: a randomly initialized encoder (the
seed's default-init baseline, as `random_init_encoder` builds it) and a linear head are trained together
with cross-entropy on the train split's labels, for as many steps as pretraining runs, at
`train.batch_size`, on the recipe's own view policy: its large views' size, crop area and aspect ratio
(`views.large_size`, `views.large_area`, `views.aspect_ratio`) and flip probability (`views.flip_p`; 0 on
digits, where a mirrored digit is another shape), through torchvision (`supervised_transform`). SGD with
Nesterov momentum 0.9, weight decay `WEIGHT_DECAY` and a per-step cosine to 0; the learning rate is
chosen from `LR_GRID` by the head's top-1 on `val`, never on another split. The chosen network is then
scored twice on every split: by its own head, and by the experiment's probe on its frozen encoder (the
same probe as every other row). In float32 on every device (a small reference, kept free of precision
effects). A reference, not a ceiling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relic_fast.config import Config
from relic_fast.evaluation.linear import LinearProbe, make_head, make_sgd, sgd_step
from relic_fast.evaluation.protocol import check_same_classes, num_classes_of, score_splits
from relic_fast.evaluation.runner import background_gap, evaluate_encoder, random_init_encoder, split_datasets
from relic_fast.experiments.progress import StepProgress
from relic_fast.run_plan import resolve_plan
from relic_fast.schedules import learning_rate, scaled_lr

BASE_LR = 0.1
"""Peak learning rate per 256 images (the usual from-scratch ResNet value): the default of `train_supervised`."""

LR_GRID = (0.1, 0.4, 1.6)
"""Peak learning rates per 256 images tried (0.025, 0.1 and 0.4 at batch 64); the best on `val` is kept."""

WEIGHT_DECAY = 5e-4
"""Weight decay of every parameter (the usual from-scratch ResNet value on small datasets)."""


def train_supervised(encoder: nn.Module, loader: Iterable, *, steps: int, num_classes: int, batch_size: int,
                     device: torch.device | str, base_lr: float = BASE_LR, weight_decay: float = WEIGHT_DECAY,
                     progress: StepProgress | None = None) -> LinearProbe:
    """Train `encoder` and a new linear head together on `loader`'s (images, labels) for `steps` steps.

    `loader` is iterated again whenever an epoch ends. Returns the head; the encoder is left in eval mode.
    """
    head = make_head(encoder.feature_dim, num_classes, device)
    classifier = nn.Sequential(encoder, head).train()
    peak = scaled_lr(base_lr, batch_size)
    optimizer = make_sgd(classifier, peak, weight_decay)
    step = 0
    while step < steps:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = torch.as_tensor(labels).flatten().long().to(device, non_blocking=True)
            loss = sgd_step(classifier, optimizer, images, labels,
                            learning_rate(step, total_steps=steps, warmup_steps=0, peak_lr=peak))
            step += 1
            if progress is not None:
                progress.step(loss)
            if step == steps:
                break
    encoder.eval()
    return head.eval()


def pretraining_steps(config: Config, train_samples: int) -> int:
    """Steps a single-process `pretrain` of `config` runs on `train_samples` images (drop_last epochs)."""
    total = config.train.epochs * (train_samples // config.train.batch_size)
    return min(total, config.train.max_steps or total)


def supervised_transform(config: Config):
    """The recipe's view policy for one labelled view: a crop of the large views' area and aspect ratio at
    their size, flipped with the recipe's probability, normalized like the views."""
    from torchvision import transforms

    views = config.views
    return transforms.Compose([
        transforms.RandomResizedCrop(views.large_size, scale=tuple(views.large_area),
                                     ratio=tuple(views.aspect_ratio)),
        transforms.RandomHorizontalFlip(views.flip_p),
        transforms.ToTensor(),
        transforms.Normalize(list(views.mean), list(views.std))])


def supervised_loader(config: Config, data_root: Path) -> torch.utils.data.DataLoader:
    """Shuffled, seeded batches of `train.batch_size` labelled views of the train split (full batches only,
    as pretraining drops the last partial one)."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(Path(data_root) / "train"), transform=supervised_transform(config))
    generator = torch.Generator().manual_seed(config.train.seed)
    return torch.utils.data.DataLoader(dataset, batch_size=min(config.train.batch_size, len(dataset)),
                                       shuffle=True, drop_last=True, generator=generator)


def train_candidate(config: Config, data_root: Path, *, base_lr: float, steps: int, num_classes: int,
                    log: Callable[[str], None]) -> tuple[nn.Module, LinearProbe]:
    """The seed's default-init encoder and a head trained with labels at `base_lr` (same init, data order
    and crops for every learning rate)."""
    device = resolve_plan(config).torch_device
    encoder = random_init_encoder(config).to(device).to(memory_format=torch.channels_last)
    loader = supervised_loader(config, data_root)
    progress = StepProgress(f"supervised, base lr {base_lr:g} (seed {config.train.seed})", steps,
                            batch_size=loader.batch_size, log=log)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        head = train_supervised(encoder, loader, steps=steps, num_classes=num_classes,
                                batch_size=loader.batch_size, device=device, base_lr=base_lr, progress=progress)
    return encoder, head


def supervised_reference(config: Config, data_root: Path, *, steps: int | None = None,
                         lr_grid: tuple[float, ...] = LR_GRID, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the seed's default-init encoder with labels for `steps` (None: the pretraining budget of
    `config`) at each learning rate of `lr_grid`, keep the best on `val` (the head's top-1), and score it on
    every split by its head (`head_splits`) and by the probe of its frozen encoder (`splits`)."""

    train_dataset, val_datasets = split_datasets(data_root)
    for name, dataset in val_datasets.items():
        check_same_classes(train_dataset, name, dataset)
    steps = pretraining_steps(config, train_dataset.num_samples) if steps is None else steps
    common = dict(eval_cfg=config.eval, data_cfg=config.data, device=resolve_plan(config).torch_device,
                  seed=config.train.seed, mean=config.views.mean, std=config.views.std)
    grid, best, started = [], None, time.perf_counter()
    for base_lr in lr_grid:
        encoder, head = train_candidate(config, data_root, base_lr=base_lr, steps=steps,
                                        num_classes=num_classes_of(train_dataset), log=log)
        val_top1 = score_splits(encoder, head, {"val": val_datasets["val"]}, **common)["val"]["top1"]
        log(f"supervised, base lr {base_lr:g} (seed {config.train.seed}): val top-1 {val_top1:.1f}% (own head)")
        grid.append({"base_lr": base_lr, "val_top1": val_top1})
        if best is None or val_top1 > best[0]:
            best = (val_top1, base_lr, encoder, head)
    _, base_lr, encoder, head = best
    train_s = round(time.perf_counter() - started, 1)  # the whole grid: what choosing the lr cost
    head_splits = score_splits(encoder, head, val_datasets, **common)
    probe = evaluate_encoder(encoder, config, data_root)
    return {"splits": probe["splits"], "background_gap": probe.get("background_gap"), "head_splits": head_splits,
            "head_background_gap": background_gap(head_splits), "lr_grid": grid, "base_lr": base_lr,
            "steps": steps, "batch_size": config.train.batch_size, "weight_decay": WEIGHT_DECAY,
            "image_size": config.views.large_size, "probe_l2": probe.get("l2"), "train_s": train_s}
