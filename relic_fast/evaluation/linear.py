"""Linear evaluation: one `nn.Linear` trained on the pooled features of a frozen encoder.

The protocol of RELICV2.md (BYOL's): SGD with Nesterov momentum 0.9, no weight decay,
lr = linear_base_lr * batch / 256 on a per-step cosine schedule to 0 (`relic_fast.schedules`: `scaled_lr`,
`learning_rate` without warm-up, the pretraining's rules), `linear_epochs` epochs, the
head starting from zeros. Two ways to feed it (`EvalConfig.linear_mode`):
- `augmented`: the paper's; each epoch passes through the DALI train eval loader
  (random-resized-crop + flip) and the frozen encoder runs under no_grad on every batch;
- `cached_features`: features extracted once with the val-style transform (resize + centre crop),
  then the head is fitted on those tensors: seconds instead of an encoder pass per epoch.
Accuracy is top-1 and top-k (k = min(5, classes)) on each validation split, in percent.

Under torchrun (`world.distributed`) each rank feeds its own rows and `sgd_step` makes the step of the
global batch: the summed cross-entropy's gradients are all-reduced (one collective of the head's size
plus the row count) and divided by the global row count, and a `batchnorm` probe standardizes with
the global batch's statistics (one all-reduce of the feature sums and squares, float64), so every
rank applies the same update, as one process would on all the rows together. The fits take a
`StepHook` called after every step (progress, checkpoints, stop signals) and a `resume` state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from relic_fast.distributed import World
from relic_fast.evaluation.features import encode, frozen
from relic_fast.schedules import learning_rate, scaled_lr

MOMENTUM = 0.9

StepHook = Callable[[int, int, torch.Tensor, int, Callable[[], dict]], None]
"""`hook(step, rows, loss_sum, batches, state)` after optimizer step `step` (1-based, counted over the
whole fit) on `rows` of this rank's samples; `loss_sum` (a device tensor, read it only when needed) and
`batches` are the running totals of the epoch; `state()` is what `resume=` needs to continue exactly."""


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
             labels: torch.Tensor, lr: float, world: World | None = None) -> torch.Tensor:
    """One cross-entropy step of the head at learning rate `lr`; returns the (device) loss (this rank's
    mean). With a distributed `world` (every rank calls it, each with its own rows, possibly none) the
    step is the one of all ranks' rows together: see `sharded_step`."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if world is not None and world.distributed:
        return sharded_step(head, optimizer, features, labels)
    loss = F.cross_entropy(head(features), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def sharded_step(head: LinearProbe, optimizer: torch.optim.Optimizer, features: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
    """The optimizer step of the global batch from this rank's share: mean cross-entropy over every rank's
    rows (the gradients of each rank's summed loss, all-reduced, divided by the global row count), with a
    `batchnorm` probe's standardization by the global batch (`global_batchnorm`). Returns this rank's mean loss."""
    rows = features.shape[0]
    if isinstance(head.norm, nn.BatchNorm1d):
        inputs, total = global_batchnorm(head.norm, features)
    else:
        inputs, total = features, None
    loss_sum = F.cross_entropy(head.linear(inputs), labels, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    loss_sum.backward()
    params = [p for p in head.parameters() if p.requires_grad]
    parts = [p.grad.flatten() for p in params]
    if total is None:  # the row count rides along with the gradients: one collective
        parts.append(torch.tensor([float(rows)], device=features.device, dtype=parts[0].dtype))
    flat = torch.cat(parts)
    dist.all_reduce(flat)
    if total is None:
        total, flat = flat[-1], flat[:-1]
    flat = flat / total
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()
    optimizer.step()
    return loss_sum.detach() / max(rows, 1)


def global_batchnorm(norm: nn.BatchNorm1d, features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """`features` standardized as `norm` (training mode, no affine) would standardize every rank's rows
    together, and `norm`'s running statistics updated as it would update them; (inputs, global rows).

    One all-reduce of the sums, the sums of squares (float64: no cancellation worth speaking of) and the
    row count. As `LinearProbe` does with a batch of one, a global batch of fewer than two rows is
    standardized by the running statistics and does not update them."""
    dim = features.shape[1]
    wide = features.double()
    stats = torch.cat([wide.sum(0), wide.square().sum(0), wide.new_tensor([features.shape[0]])])
    dist.all_reduce(stats)
    total = float(stats[-1].item())
    if total < 2:
        return F.batch_norm(features, norm.running_mean, norm.running_var, training=False, eps=norm.eps), total
    mean = stats[:dim] / total
    var = (stats[dim:2 * dim] / total - mean.square()).clamp_min(0.0)
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.mul_(1 - factor).add_(mean.to(norm.running_mean.dtype), alpha=factor)
        unbiased = var * (total / (total - 1))
        norm.running_var.mul_(1 - factor).add_(unbiased.to(norm.running_var.dtype), alpha=factor)
    inputs = (features - mean.to(features.dtype)) * torch.rsqrt(var + norm.eps).to(features.dtype)
    return inputs, total


def fit_linear_on_features(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                           epochs: int, batch_size: int, base_lr: float, seed: int = 0,
                           device: torch.device | str = "cpu", feature_norm: str = "none",
                           resume: dict | None = None, on_step: StepHook | None = None) -> LinearProbe:
    """Train the linear head on cached features (`cached_features` mode); returns it.

    Each epoch visits every sample once in a fresh seeded order, the last batch partial. The batch
    of the lr rule is min(batch_size, num_samples): a dataset smaller than one batch is one step.
    `resume` (a `state()` of `on_step`) continues from that step: the same head as without the stop.
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
    step, loss_sum, batches = restore_fit(head, optimizer, resume, device, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(num_samples, generator=generator).to(device)  # drawn for skipped epochs too
        if step >= (epoch + 1) * steps_per_epoch:
            continue
        for start in range((step - epoch * steps_per_epoch) * batch, num_samples, batch):
            rows = order[start:start + batch]
            lr = learning_rate(step, total_steps=total_steps, warmup_steps=0, peak_lr=peak)
            loss_sum += sgd_step(head, optimizer, features[rows], labels[rows], lr)
            step += 1
            batches += 1
            if on_step is not None:
                on_step(step, len(rows), loss_sum, batches, fit_state(head, optimizer, step, loss_sum, batches))
        loss_sum, batches = torch.zeros((), device=device), 0
    return head.eval()


def restore_fit(head: LinearProbe, optimizer: torch.optim.Optimizer, resume: dict | None,
                device: torch.device | str, steps_per_epoch: int) -> tuple[int, torch.Tensor, int]:
    """Load a fit's saved state into `head` and `optimizer`; (step, epoch loss sum, epoch batches) to go on from."""
    if resume is None:
        return 0, torch.zeros((), device=device), 0
    head.load_state_dict(resume["head"])
    optimizer.load_state_dict(resume["optimizer"])
    step = int(resume["step"])
    loss_sum, batches = resume["epoch_loss"] if step % steps_per_epoch else (0.0, 0)  # an epoch's end: a new one
    return step, torch.tensor(float(loss_sum), device=device), int(batches)


def fit_state(head: LinearProbe, optimizer: torch.optim.Optimizer, step: int, loss_sum: torch.Tensor,
              batches: int) -> Callable[[], dict]:
    """What `restore_fit` needs, made only when asked (the epoch's loss is read then: a host sync)."""
    return lambda: {"head": head.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "epoch_loss": [float(loss_sum.item()), batches]}


def fit_linear_augmented(encoder: nn.Module, loader: Iterable, *, steps_per_epoch: int,
                         feature_dim: int, num_classes: int, epochs: int, batch_size: int,
                         base_lr: float, device: torch.device | str, precision: str = "fp32",
                         feature_norm: str = "none",
                         on_epoch: Callable[[int, float], None] | None = None,
                         world: World | None = None, resume: dict | None = None,
                         on_step: StepHook | None = None) -> LinearProbe:
    """Train the linear head on augmented views (`augmented` mode): the paper's protocol.

    `loader` yields (images, labels); every `iter(loader)` is one epoch of fresh random crops (the rest
    of a part-done epoch first, for a loader restored from a checkpoint). The encoder stays frozen
    (eval mode, no grad) and runs on every batch. `on_epoch(epoch, mean_loss)` is called after each epoch
    (one host sync per epoch). `batch_size` is the global batch of the lr rule; under torchrun (`world`)
    each rank's loader holds its share and the steps are `sharded_step`s. `resume`: a saved `state()`.
    """
    peak = scaled_lr(base_lr, batch_size)
    total_steps = epochs * steps_per_epoch
    head = make_head(feature_dim, num_classes, device, feature_norm)
    optimizer = make_sgd(head, peak)
    step, loss_sum, batches = restore_fit(head, optimizer, resume, device, steps_per_epoch)
    with frozen(encoder):
        for epoch in range(step // steps_per_epoch, epochs):
            for images, labels in loader:
                features = encode(encoder, images, device, precision)
                labels = torch.as_tensor(labels).flatten().long().to(device, non_blocking=True)
                lr = learning_rate(step, total_steps=total_steps, warmup_steps=0, peak_lr=peak)
                loss_sum += sgd_step(head, optimizer, features, labels, lr, world)
                step += 1
                batches += 1
                if on_step is not None:
                    on_step(step, labels.shape[0], loss_sum, batches,
                            fit_state(head, optimizer, step, loss_sum, batches))
            if on_epoch is not None:
                on_epoch(epoch, loss_sum.item() / max(batches, 1))  # host sync, once per epoch
            loss_sum, batches = torch.zeros((), device=device), 0
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
