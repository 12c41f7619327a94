"""Linear evaluation: one `nn.Linear` trained on the pooled features of a frozen encoder.

The protocol of RELICV2.md (BYOL's): SGD with Nesterov momentum 0.9, no weight decay,
lr = linear_base_lr * batch / 256 on a per-step cosine schedule to 0, `linear_epochs` epochs, the
head starting from zeros. Two ways to feed it (`EvalConfig.linear_mode`):
- `augmented`: the paper's; each epoch passes through the DALI train eval loader
  (random-resized-crop + flip) and the frozen encoder runs under no_grad on every batch;
- `cached_features`: features extracted once with the val-style transform (resize + centre crop),
  then the head is fitted on those tensors: seconds instead of an encoder pass per epoch.
Accuracy is top-1 and top-k (k = min(5, classes)) on each validation split, in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from relic_fast.evaluation.features import encode, frozen

MOMENTUM = 0.9


def cosine_lr(step: int, total_steps: int, peak_lr: float) -> float:
    """Learning rate of `step` on a cosine from `peak_lr` (step 0) to 0 (step `total_steps`)."""
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


class LinearProbe(nn.Module):
    """The probe: an optional parameter-free feature standardization, then one `nn.Linear`.

    `feature_norm="batchnorm"` is a BatchNorm1d without affine parameters whose statistics are the
    cumulative average over the training batches (momentum=None: exact for a frozen encoder); it is
    a fixed affine map at evaluation, so the probe stays linear. `"none"` is the identity.
    The linear layer starts at zero (BYOL's init: the result depends only on data order).
    """

    def __init__(self, feature_dim: int, num_classes: int, feature_norm: str = "none"):
        super().__init__()
        if feature_norm not in ("none", "batchnorm"):
            raise ValueError(f"feature_norm must be none or batchnorm, got {feature_norm!r}")
        self.norm = (nn.BatchNorm1d(feature_dim, affine=False, momentum=None) if feature_norm == "batchnorm"
                     else nn.Identity())
        self.linear = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of pooled features (B, F)."""
        if self.training and features.shape[0] < 2 and isinstance(self.norm, nn.BatchNorm1d):
            # A batch of one has no variance: use the statistics gathered so far, and do not update them.
            return self.linear(F.batch_norm(features, self.norm.running_mean, self.norm.running_var,
                                            training=False, eps=self.norm.eps))
        return self.linear(self.norm(features))


def make_head(feature_dim: int, num_classes: int, device: torch.device | str,
              feature_norm: str = "none") -> LinearProbe:
    """A zero-initialized `LinearProbe` on `device`, in train mode."""
    return LinearProbe(feature_dim, num_classes, feature_norm).to(device).train()


def make_sgd(module: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.SGD:
    """SGD with Nesterov momentum 0.9 over `module`'s parameters (the protocol's optimizer: no weight decay)."""
    return torch.optim.SGD(module.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=weight_decay)


def sgd_step(head: nn.Module, optimizer: torch.optim.Optimizer, features: torch.Tensor,
             labels: torch.Tensor, lr: float) -> torch.Tensor:
    """One cross-entropy step of the head at learning rate `lr`; returns the (device) loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = F.cross_entropy(head(features), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def fit_linear_on_features(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                           epochs: int, batch_size: int, base_lr: float, seed: int = 0,
                           device: torch.device | str = "cpu", feature_norm: str = "none") -> LinearProbe:
    """Train the linear head on cached features (`cached_features` mode); returns it.

    Each epoch visits every sample once in a fresh seeded order, the last batch partial. The batch
    of the lr rule is min(batch_size, num_samples): a dataset smaller than one batch is one step.
    """
    features = features.to(device).float()
    labels = labels.to(device).long()
    num_samples = features.shape[0]
    batch = min(batch_size, num_samples)
    steps_per_epoch = math.ceil(num_samples / batch)
    total_steps = epochs * steps_per_epoch
    peak = scaled_lr(base_lr, batch)
    head = make_head(features.shape[1], num_classes, device, feature_norm)
    optimizer = make_sgd(head, peak)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        order = torch.randperm(num_samples, generator=generator).to(device)
        for start in range(0, num_samples, batch):
            rows = order[start:start + batch]
            sgd_step(head, optimizer, features[rows], labels[rows], cosine_lr(step, total_steps, peak))
            step += 1
    return head.eval()


def fit_linear_augmented(encoder: nn.Module, loader: Iterable, *, steps_per_epoch: int,
                         feature_dim: int, num_classes: int, epochs: int, batch_size: int,
                         base_lr: float, device: torch.device | str, precision: str = "fp32",
                         feature_norm: str = "none",
                         on_epoch: Callable[[int, float], None] | None = None) -> LinearProbe:
    """Train the linear head on augmented views (`augmented` mode): the paper's protocol.

    `loader` yields (images, labels); every `iter(loader)` is one epoch of fresh random crops. The
    encoder stays frozen (eval mode, no grad) and runs on every batch. `on_epoch(epoch, mean_loss)`
    is called after each epoch (one host sync per epoch).
    """
    peak = scaled_lr(base_lr, batch_size)
    total_steps = epochs * steps_per_epoch
    head = make_head(feature_dim, num_classes, device, feature_norm)
    optimizer = make_sgd(head, peak)
    step = 0
    with frozen(encoder):
        for epoch in range(epochs):
            loss_sum = torch.zeros((), device=device)
            batches = 0
            for images, labels in loader:
                features = encode(encoder, images, device, precision)
                labels = torch.as_tensor(labels).flatten().long().to(device, non_blocking=True)
                loss_sum += sgd_step(head, optimizer, features, labels, cosine_lr(step, total_steps, peak))
                step += 1
                batches += 1
            if on_epoch is not None:
                on_epoch(epoch, loss_sum.item() / max(batches, 1))  # host sync, once per epoch
    return head.eval()


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracy (percent) for each k in `ks`, each k capped at the number of classes."""
    labels = labels.to(logits.device).long()
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices                   # (N, largest)
    hits = top == labels[:, None]
    return [100.0 * hits[:, :min(k, largest)].any(dim=1).float().mean().item() for k in ks]


def evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                  chunk_size: int = 65536) -> dict[str, float]:
    """{"top1", "top5"} (percent) of the head (put in eval mode) on cached features; top5 means top-min(5, classes)."""
    device = next(head.parameters()).device
    head.eval()
    with torch.no_grad():
        logits = torch.cat([head(features[i:i + chunk_size].to(device).float())
                            for i in range(0, features.shape[0], chunk_size)])
    top1, top5 = topk_accuracy(logits, labels, (1, 5))
    return {"top1": top1, "top5": top5}
