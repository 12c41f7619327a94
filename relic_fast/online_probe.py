"""The online probe: a live accuracy signal while pretraining, from labels the training batches carry anyway.

A linear head (a BatchNorm without affine parameters, then one `nn.Linear`) learns to classify the online
encoder's pooled features of the large views, detached, with its own SGD: the encoder's update never sees
it, and it draws no random numbers (zero init), so a run with the probe trains the same encoder bit for bit.
Its train top-1 is counted on the device and read at the log interval; its val top-1 comes from the
monitor, which scores the probe's head on the val split's features. Under DDP the head's gradients are
averaged over ranks every step (one small all-reduce), so every rank holds the same head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from relic_fast.distributed import World

MOMENTUM = 0.9


class OnlineProbe(nn.Module):
    """Standardize, then classify: the probe's head; `train_on` is one SGD step on a batch's features."""

    def __init__(self, feature_dim: int, num_classes: int, *, lr: float, world: World):
        super().__init__()
        self.norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.linear = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.linear.weight)  # no random draw: the run's random stream stays the encoder's
        nn.init.zeros_(self.linear.bias)
        self.world = world
        self.to(world.device)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True)
        self.correct = torch.zeros((), dtype=torch.int64, device=world.device)
        self.seen = torch.zeros((), dtype=torch.int64, device=world.device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of pooled features (N, F)."""
        return self.linear(self.norm(features.float()))

    def train_on(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """One step on the large views' features (L*B, F, view-major) and the batch's labels (B,); no host sync."""
        labels = labels.to(features.device, non_blocking=True).long()
        labels = labels.repeat(features.shape[0] // labels.shape[0])  # every large view of a sample: its label
        self.train()
        with torch.autocast(features.device.type, enabled=False):
            logits = self(features.detach())
            loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world.distributed:
            grads = [p.grad for p in self.linear.parameters()]
            flat = torch.cat([g.flatten() for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world.world_size
            torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)])
        self.optimizer.step()
        with torch.no_grad():
            self.correct += (logits.argmax(dim=1) == labels).sum()
            self.seen += labels.numel()

    def train_top1(self) -> float:
        """Top-1 (percent) over the steps since the last call, every rank's batches counted; a host sync point."""
        counts = torch.stack([self.correct, self.seen])
        if self.world.distributed:
            torch.distributed.all_reduce(counts)
        correct, seen = counts.tolist()  # note: a CPU-GPU sync point; called at the log interval only
        self.correct.zero_()
        self.seen.zero_()
        return 100.0 * correct / seen if seen else float("nan")

    def sync_statistics(self) -> None:
        """Every rank takes rank 0's standardization statistics (each rank saw only its own batches), so all
        ranks score with the same head."""
        if self.world.distributed:
            for buffer in self.norm.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def state(self) -> dict:
        """What a checkpoint keeps of the probe: its head, statistics and optimizer."""
        return {"module": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict) -> None:
        """Continue from `state()` of a checkpoint."""
        self.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


def labelled_classes(dataset) -> int:
    """Number of classes of a dataset whose samples all carry a label, else 0 (the probe cannot run)."""
    if not dataset.labels or min(dataset.labels) < 0:
        return 0
    return len(dataset.class_names) or max(dataset.labels) + 1
