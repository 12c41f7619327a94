"""The supervised reference: the same encoder trained end-to-end with labels, for the pretraining budget.

The demo experiment compares a random-init encoder with RELICv2 encoders under a linear probe. When none
of them rises above chance, the first question is whether the budget (steps, batch, image size, encoder)
lets this encoder learn the classes at all. This reference answers it: a randomly initialized encoder
(the seed's, as `random_init_encoder` builds it) and a linear head are trained together with
cross-entropy on the train split's labels, for as many steps as pretraining runs, on the DALI
linear-eval train pipeline (random-resized-crop + flip), then scored on every validation split like the
probes. It is a ceiling for what a self-supervised encoder of that budget can approach, not a protocol
of the paper: SGD with Nesterov momentum 0.9, weight decay `WEIGHT_DECAY`, lr = `BASE_LR` * batch / 256
on a per-step cosine to 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from relic_fast.config import Config
from relic_fast.evaluation.features import autocast_context
from relic_fast.evaluation.linear import LinearProbe, MOMENTUM, cosine_lr, evaluate_head, make_head, scaled_lr

BASE_LR = 0.1
"""Peak learning rate per 256 images (the usual from-scratch ResNet value)."""

WEIGHT_DECAY = 5e-4
"""Weight decay of every parameter (the usual from-scratch ResNet value on small datasets)."""


def train_supervised(encoder: nn.Module, loader: Iterable, *, steps: int, num_classes: int, batch_size: int,
                     device: torch.device | str, precision: str = "fp32", base_lr: float = BASE_LR,
                     weight_decay: float = WEIGHT_DECAY) -> LinearProbe:
    """Train `encoder` and a new linear head together on `loader`'s (images, labels) for `steps` steps.

    `loader` is iterated again whenever an epoch ends. Returns the head; the encoder is left in eval mode.
    """
    device = torch.device(device)
    head = make_head(encoder.feature_dim, num_classes, device)
    parameters = list(encoder.parameters()) + list(head.parameters())
    peak = scaled_lr(base_lr, batch_size)
    optimizer = torch.optim.SGD(parameters, lr=peak, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)
    encoder.train()
    step = 0
    while step < steps:
        for images, labels in loader:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, steps, peak)
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            labels = torch.as_tensor(labels).flatten().long().to(device, non_blocking=True)
            with autocast_context(device, precision):
                logits = head(encoder(images).float().flatten(1))
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
    from relic_fast.evaluation.protocol import dataset_features, eval_loader, num_classes_of
    from relic_fast.evaluation.runner import (background_gap, random_init_encoder, resolve_device,
                                             split_datasets)

    train_dataset, val_datasets = split_datasets(data_root)
    device = resolve_device(config.train.device)
    # bf16 where the recipe trains in it on a GPU; fp16 would need loss scaling, so it runs in fp32.
    precision = "bf16" if device.type == "cuda" and config.train.precision == "bf16" else "fp32"
    steps = pretraining_steps(config, train_dataset.num_samples) if steps is None else steps
    batch = min(config.train.batch_size, train_dataset.num_samples)
    common = dict(data_cfg=dataclasses.replace(config.data, drop_last=False), device=device,
                  mean=config.views.mean, std=config.views.std)
    encoder = random_init_encoder(config).to(device).to(memory_format=torch.channels_last)
    loader = eval_loader(train_dataset, train=True, seed=config.train.seed,
                         eval_cfg=dataclasses.replace(config.eval, linear_batch_size=batch), **common)
    head = train_supervised(encoder, loader, steps=steps, num_classes=num_classes_of(train_dataset),
                            batch_size=batch, device=device, precision=precision)
    common["data_cfg"] = dataclasses.replace(common["data_cfg"], shuffle=False)
    splits = {}
    for name, dataset in val_datasets.items():
        features, labels = dataset_features(encoder, dataset, eval_cfg=config.eval, seed=config.train.seed,
                                            precision=precision, **common)
        splits[name] = evaluate_head(head, features, labels)
    return {"splits": splits, "background_gap": background_gap(splits), "steps": steps, "batch_size": batch,
            "base_lr": BASE_LR, "weight_decay": WEIGHT_DECAY, "image_size": config.eval.image_size}
