"""LARS as BYOL (and so RELICv2's code base) runs it, in torch multi-tensor ops.

For each adapted parameter p (p.ndim >= 2: conv and linear weights) with gradient g:

    update = g + weight_decay * p                       (decay added before the LARS scaling)
    trust  = eta * ||p|| / ||update||  if both norms > 0, else 1
    buf    = momentum * buf + trust * update
    p     -= lr * buf

Biases and normalization parameters (p.ndim < 2) get neither weight decay nor the trust ratio:
for them this is plain momentum SGD (torch.optim.SGD with the same momentum, dampening 0).
This is BYOL's optax chain (add decay, scale_by_lars with its momentum trace, scale by -lr): the
momentum buffer holds trust-scaled updates and the learning rate multiplies it at the step, like
torch's SGD; with a constant lr it equals the "lr inside the buffer" form of You et al.
"""

from __future__ import annotations

import importlib.util
from typing import Iterable

import torch
from torch import nn

from relic_fast.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum (see the module docstring for the math).

    Each param group may set `lars_exclude=True` (no weight decay, no adaptation); `build_lars`
    makes one such group for the parameters with ndim < 2. The step is multi-tensor: per group,
    a handful of `torch._foreach_*` calls and one vectorized trust-ratio computation.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS settings: lr={lr}, momentum={momentum}, "
                             f"weight_decay={weight_decay}, trust_coefficient={trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - the torch.optim signature
        """One LARS step over every group (the closure, if given, re-evaluates the loss first)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._step_group(group, params)
        return loss

    def _step_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """Apply the update to `params` of one group with its hyper-parameters."""
        grads = [p.grad for p in params]
        buffers = []
        for p in params:  # grouping only: lazily create the momentum buffers
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        if group["lars_exclude"]:
            updates = grads
        else:
            decayed = group["weight_decay"] > 0
            updates = torch._foreach_add(grads, params, alpha=group["weight_decay"]) if decayed else grads
            param_norms = torch.stack(torch._foreach_norm(params))
            update_norms = torch.stack(torch._foreach_norm(updates))
            trust = torch.where((param_norms > 0) & (update_norms > 0),
                                group["trust_coefficient"] * param_norms / update_norms,
                                torch.ones_like(param_norms))
            trust = list(trust.to(updates[0].dtype).unbind())
            if decayed:  # `updates` is already a fresh list: scale in place
                torch._foreach_mul_(updates, trust)
            else:  # never scale the .grad tensors themselves
                updates = torch._foreach_mul(grads, trust)
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, updates)
        torch._foreach_add_(params, buffers, alpha=-group["lr"])


def lars_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (ndim >= 2) with decay and adaptation; biases/norm params (ndim < 2) without."""
    params = [p for p in module.parameters() if p.requires_grad]
    adapted = [p for p in params if p.ndim >= 2]
    excluded = [p for p in params if p.ndim < 2]
    return [dict(params=adapted, weight_decay=weight_decay, lars_exclude=False),
            dict(params=excluded, weight_decay=0.0, lars_exclude=True)]


def _apex_lars_class():
    """apex's FusedLARS class, or None when apex (with that optimizer) is not importable."""
    if importlib.util.find_spec("apex") is None:
        return None
    try:
        from apex.optimizers import FusedLARS  # only in some apex builds (e.g. NVIDIA's MLPerf ones)
    except ImportError:
        return None
    return FusedLARS


def choose_lars_implementation(implementation: str) -> str:
    """The LARS that runs for `optim.implementation`: "auto" is the reference (BYOL's LARS). apex's
    FusedLARS computes the trust ratio from ||g|| with an eps, not BYOL's ||g + wd p||, so it is not the
    paper's optimizer and is used only when asked for by name."""
    if implementation not in ("auto", "reference", "apex"):
        raise ValueError(f"optim.implementation must be 'auto', 'reference' or 'apex', got {implementation!r}")
    return "reference" if implementation == "auto" else implementation


def build_lars(online: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """LARS over the trainable parameters of `online` with `optim`'s settings, starting at `lr`.

    `optim.implementation` (see `choose_lars_implementation`): "reference" is `LARS` above; "apex" uses
    apex's `FusedLARS` (and raises a clear error when it is not importable).
    """
    groups = lars_param_groups(online, optim.weight_decay)
    if choose_lars_implementation(optim.implementation) == "apex":
        fused = _apex_lars_class()
        if fused is not None:
            for group in groups:  # apex: skip adaptation with is_skipped on the excluded group
                group["is_skipped"] = group.pop("lars_exclude")
            return fused(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                         trust_coefficient=optim.trust_coefficient)
        raise RuntimeError("optim.implementation = 'apex' but apex.optimizers.FusedLARS is not "
                           "importable (install NVIDIA apex with its CUDA extensions, or use "
                           "'reference' / 'auto')")
    return LARS(groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                trust_coefficient=optim.trust_coefficient)
