"""One RELICv2 training step as small named functions: views in, loss terms out, update applied.

`forward_loss` is the part `torch.compile` sees (online over large and small views, one call per
resolution; target over large views without grad; the multi-view loss). `train_step` adds backward,
the LARS step and the EMA update. The loss function is passed in, never hidden in a `forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.profiler import record_function

from dali_pipelines.batch import ViewBatch, normalize_views
from relic_fast.compiling import compile_step
from relic_fast.config import LossConfig, ModelConfig, OptimConfig, ViewsConfig
from relic_fast.environment import configure_cuda_math
from relic_fast.loss import LOSS_TERMS, draw_negative_offsets, relicv2_loss_terms
from relic_fast.models import build_networks, convert_sync_batchnorm, ema_update
from relic_fast.optim import build_lars

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class StepInputs:
    """A batch of views on the training device, normalized and in the memory format of the model."""

    large: torch.Tensor
    small: torch.Tensor | None
    num_large: int
    num_small: int


def memory_format_of(channels_last: bool) -> torch.memory_format:
    """The memory format of networks and views for `train.channels_last`: the one place it is decided."""
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_views(batch: ViewBatch, views: ViewsConfig, device: torch.device, channels_last: bool) -> StepInputs:
    """Move a loader batch to `device` (no-op for GPU pipelines) and normalize it if the loader deferred that."""
    memory_format = memory_format_of(channels_last)

    def place(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        x = x.to(device, non_blocking=True)
        if not batch.normalized:
            x = normalize_views(x, views.mean, views.std, torch.float32)
        elif x.dtype != torch.float32:
            x = x.float()  # half-precision views: autocast casts again where it wants; fp32 steps need fp32
        return x.contiguous(memory_format=memory_format)

    return StepInputs(place(batch.large), place(batch.small), views.num_large, views.num_small)


class MultiViewOnline(nn.Module):
    """The online network applied to every view: one call per resolution, one module call in all.

    DDP needs a single forward per backward, so both resolutions go through this one module.
    """

    def __init__(self, online: nn.Module):
        super().__init__()
        self.online = online

    def forward(self, large: torch.Tensor, small: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions of every view, large views first: ((L+S)*B, D), view-major; and the pooled features
        of the large views (L*B, F), detached (the online probe's input)."""
        large_out = self.online(large)
        features = large_out.features.detach()
        if small is None:
            return large_out.prediction, features
        return torch.cat([large_out.prediction, self.online(small).prediction]), features


def forward_loss(online: nn.Module, target: nn.Module, large: torch.Tensor, small: torch.Tensor | None,
                 num_large: int, num_small: int, loss: LossConfig,
                 negative_offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Online predictions for every view against target projections of the large views -> (the loss terms
    stacked in `LossTerms` order, total first; the large views' detached pooled features).

    `online` is a `MultiViewOnline` (possibly DDP-wrapped); `target` maps images to projections.
    """
    batch = large.shape[0] // num_large
    predictions, features = online(large, small)
    with torch.no_grad():
        targets = target(large)
    online_views = predictions.view(num_large + num_small, batch, -1)
    target_views = targets.view(num_large, batch, -1)
    terms = relicv2_loss_terms(online_views, target_views, temperature=loss.temperature, beta=loss.beta,
                               implementation=loss.implementation, gather_targets=loss.gather_targets,
                               negative_offsets=negative_offsets)
    return terms.stack(), features


class NonFiniteLossError(FloatingPointError):
    """The loss of step `step` was NaN or infinite; no checkpoint holds a state after it."""

    def __init__(self, step: int, terms: list[float] | None):
        where = "on another rank" if terms is None else f"({', '.join(LOSS_TERMS)}) = {terms}"
        super().__init__(f"non-finite loss at step {step}: {where}")
        self.step = step
        self.terms = terms


NO_STEP = torch.iinfo(torch.int64).max
"""`NonFiniteGuard.first_step` while every recorded loss was finite (the neutral element of a min)."""


class NonFiniteGuard:
    """A device-side record of the first step whose loss was not finite, read only where the loop syncs anyway.

    `record` is a few tiny device ops per step and never waits for the device, so the launch queue
    keeps running ahead. `check` reads the record (a host sync) and raises: the trainer calls it at
    the log interval and before every checkpoint write, so a state updated by a non-finite loss is
    never checkpointed, and the error names the step where the loss went bad.
    """

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), NO_STEP, dtype=torch.int64, device=device)
        self.first_terms = torch.zeros(len(LOSS_TERMS), dtype=torch.float32, device=device)

    def record(self, terms: torch.Tensor, step: int) -> None:
        """Note step `step` (a Python int: a kernel argument, no copy) if `terms` is its first non-finite loss."""
        # x * 0 is 0 for a finite x and NaN for inf or NaN: the sum is nonzero exactly when a term is not
        # finite (3 kernels; `isfinite(...).all()` is about 10)
        not_finite = terms.mul(0.0).sum().ne(0.0)
        first = not_finite & (self.first_step == NO_STEP)
        self.first_step = torch.where(first, step, self.first_step)
        self.first_terms = torch.where(first, terms.float(), self.first_terms)

    def check(self, reduce_min: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Raise `NonFiniteLossError` if a recorded loss was not finite. A host sync point.

        `reduce_min` (distributed runs) takes the minimum of `first_step` over ranks, so that every
        rank raises at the same check and names the same step."""
        first_step = self.first_step if reduce_min is None else reduce_min(self.first_step)
        step = int(first_step.item())  # note: a CPU-GPU sync point; callers sit where the loop syncs anyway
        if step != NO_STEP:
            terms = self.first_terms.tolist() if step == int(self.first_step.item()) else None
            raise NonFiniteLossError(step, terms)


@dataclass
class StepContext:
    """What a step needs beyond the batch: networks, optimizer, scaler, and the compiled loss forward."""

    online: nn.Module          # possibly DDP-wrapped
    online_module: nn.Module   # the bare online network (for EMA)
    target: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    forward: Callable[..., torch.Tensor]
    loss: LossConfig
    precision: str
    device: torch.device
    large_features: torch.Tensor | None = None
    """The online encoder's pooled features of the last step's large views (L*B, F), detached: what the
    online probe trains on. Replaced by every step; never part of the encoder's update."""


def build_step_context(model: ModelConfig, loss: LossConfig, optim: OptimConfig, *, device: torch.device,
                       precision: str, channels_last: bool, compiled: bool, lr: float,
                       compile_backend: str = "inductor", compile_mode: str = "default",
                       compile_scope: str = "forward", sync_batchnorm: bool = False,
                       wrap: Callable[[nn.Module], nn.Module] | None = None) -> StepContext:
    """The networks, LARS, scaler and (optionally compiled) loss forward of a step: the one builder that the
    trainer, the benchmarks, the profiler and the self-test share, so they all run the same step.

    Weights come from torch's global RNG (seed it first). `sync_batchnorm` converts BatchNorm layers for
    DDP on CUDA; `wrap` wraps the multi-view online network (DDP). `compiled` compiles the step as
    `relic_fast.compiling.compile_step` says (`compile_mode`, `compile_scope`: static shapes, one graph per
    view resolution), and a later recompilation or graph break is logged with its reason (each costs warm-up).
    """
    configure_cuda_math(device)
    online, target = build_networks(model)
    if sync_batchnorm:
        online, target = convert_sync_batchnorm(online), convert_sync_batchnorm(target)
    memory_format = memory_format_of(channels_last)
    online = online.to(device, memory_format=memory_format)
    target = target.to(device, memory_format=memory_format)
    optimizer = build_lars(online, optim, lr)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    forward = forward_loss
    if compiled:
        forward = compile_step(forward_loss, [online, target], mode=compile_mode, scope=compile_scope,
                               backend=compile_backend)
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    multi_view = MultiViewOnline(online)
    return StepContext(online=wrap(multi_view) if wrap is not None else multi_view, online_module=online,
                       target=target, optimizer=optimizer, scaler=scaler, forward=forward, loss=loss,
                       precision=precision, device=device)


def draw_offsets(context: StepContext, global_batch: int) -> torch.Tensor | None:
    """This step's shared negative offsets when the loss subsamples negatives (else None: all negatives)."""
    if context.loss.num_negatives == 0:
        return None
    count = min(context.loss.num_negatives, global_batch - 1)
    return draw_negative_offsets(global_batch, count, device=context.device)


def train_step(context: StepContext, inputs: StepInputs, lr: float, tau: float, global_batch: int) -> torch.Tensor:
    """Forward, backward, LARS step at `lr`, EMA update at `tau`; returns the detached loss terms, stacked in
    `LossTerms` order (no host sync).

    The update is applied whatever the loss: `NonFiniteGuard` records a non-finite one on the device."""
    for group in context.optimizer.param_groups:
        group["lr"] = lr
    dtype = AUTOCAST_DTYPES[context.precision]
    offsets = draw_offsets(context, global_batch if context.loss.gather_targets else inputs.large.shape[0] // inputs.num_large)
    # record_function labels name the phases in `relic-fast profile` traces (near free otherwise).
    with record_function("forward"):
        with torch.autocast(context.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            terms, context.large_features = context.forward(context.online, context.target, inputs.large,
                                                            inputs.small, inputs.num_large, inputs.num_small,
                                                            context.loss, offsets)
    context.optimizer.zero_grad(set_to_none=True)
    scaler = context.scaler
    total = terms[0]  # `LossTerms.total` comes first
    with record_function("backward"):
        (scaler.scale(total) if scaler is not None else total).backward()
    with record_function("optimizer"):
        if scaler is not None:
            scaler.step(context.optimizer)
            scaler.update()
        else:
            context.optimizer.step()
    with record_function("ema"):
        ema_update(context.target, context.online_module, tau)
    return terms.detach()

