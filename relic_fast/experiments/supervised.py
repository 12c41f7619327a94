"""The supervised reference: the same encoder trained end-to-end with labels, for the pretraining budget.

The demo experiment compares a random-init encoder with RELICv2 encoders under a linear probe. When none
of them rises above chance, the first question is whether the budget (steps, batch, image size, encoder)
lets this encoder learn the classes at all. This reference answers it: a randomly initialized encoder
(the seed's default-init baseline, as `random_init_encoder` builds it) and a linear head are trained together with
cross-entropy on the train split's labels, for as many steps as pretraining runs, on the DALI
linear-eval train pipeline (random-resized-crop + flip), then scored on every validation split like the
probes; in float32 on every device (a small reference, kept free of precision effects). It is what plain
supervised SGD reaches in the same budget (no upper bound: at 124 steps on the demo data it stays at
chance while LARS-driven RELICv2 learns), not a protocol of the paper: SGD with
Nesterov momentum 0.9, weight decay `WEIGHT_DECAY`, lr = `BASE_LR` * batch / 256 on a per-step cosine
to 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relic_fast.config import Config
from relic_fast.evaluation.linear import LinearProbe, make_head, make_sgd, sgd_step
from relic_fast.evaluation.protocol import check_same_classes, eval_loader, num_classes_of, score_splits
from relic_fast.evaluation.runner import background_gap, random_init_encoder, split_datasets
from relic_fast.run_plan import resolve_plan
from relic_fast.schedules import learning_rate, scaled_lr

BASE_LR = 0.1
"""Peak learning rate per 256 images (the usual from-scratch ResNet value)."""

WEIGHT_DECAY = 5e-4
"""Weight decay of every parameter (the usual from-scratch ResNet value on small datasets)."""


def train_supervised(encoder: nn.Module, loader: Iterable, *, steps: int, num_classes: int, batch_size: int,
                     device: torch.device | str, base_lr: float = BASE_LR,
                     weight_decay: float = WEIGHT_DECAY) -> LinearProbe:
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
            sgd_step(classifier, optimizer, images, labels,
                     learning_rate(step, total_steps=steps, warmup_steps=0, peak_lr=peak))
            step += 1
            if step == steps:
                break
    encoder.eval()
    return head.eval()


def pretraining_steps(config: Config, train_samples: int) -> int:
    """Steps a single-process `pretrain` of `config` runs on `train_samples` images (drop_last epochs)."""
    total = config.train.epochs * (train_samples // config.train.batch_size)
    return min(total, config.train.max_steps or total)


def supervised_reference(config: Config, data_root: Path, *, steps: int | None = None) -> dict[str, Any]:
    """Train the seed's random-init encoder with labels for `steps` (None: the pretraining budget of
    `config`) at `train.batch_size` and `eval.image_size`; top-1/top-5 on every validation split."""

    train_dataset, val_datasets = split_datasets(data_root)
    for name, dataset in val_datasets.items():
        check_same_classes(train_dataset, name, dataset)
    device = resolve_plan(config).torch_device
    steps = pretraining_steps(config, train_dataset.num_samples) if steps is None else steps
    batch = min(config.train.batch_size, train_dataset.num_samples)
    common = dict(device=device, seed=config.train.seed, mean=config.views.mean, std=config.views.std)
    encoder = random_init_encoder(config).to(device).to(memory_format=torch.channels_last)
    loader = eval_loader(train_dataset, train=True, data_cfg=dataclasses.replace(config.data, drop_last=False),
                         eval_cfg=dataclasses.replace(config.eval, linear_batch_size=batch), **common)
    head = train_supervised(encoder, loader, steps=steps, num_classes=num_classes_of(train_dataset),
                            batch_size=batch, device=device)
    splits = score_splits(encoder, head, val_datasets, eval_cfg=config.eval, data_cfg=config.data, **common)
    return {"splits": splits, "background_gap": background_gap(splits), "steps": steps, "batch_size": batch,
            "base_lr": BASE_LR, "weight_decay": WEIGHT_DECAY, "image_size": config.eval.image_size}
