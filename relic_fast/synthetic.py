"""Training steps without a data pipeline: synthetic views on the device and a standalone step context.

What the model alone consumes (images/s when data costs nothing) is the yardstick every input
pipeline is measured against. The step benchmark (`benchmarks/bench_step.py`), the profiler's
consumption rate and the self-test's compiled-vs-eager check all build the trainer's step
(`relic_fast.step.train_step`) from these two functions, so they time and test exactly what the
trainer runs: the same networks, LARS, EMA and (optionally compiled) `forward_loss`.
"""

from __future__ import annotations

import torch

from relic_fast.compiling import compile_step
from relic_fast.config import LossConfig, ModelConfig, OptimConfig, ViewsConfig
from relic_fast.environment import configure_cuda_math
from relic_fast.models import build_networks
from relic_fast.optim import build_lars
from relic_fast.step import MultiViewOnline, StepContext, StepInputs, forward_loss


def memory_format_of(channels_last: bool) -> torch.memory_format:
    """torch.channels_last or torch.contiguous_format."""
    return torch.channels_last if channels_last else torch.contiguous_format


def synthetic_inputs(views: ViewsConfig, batch_size: int, device: torch.device | str, *,
                     channels_last: bool, seed: int = 0) -> StepInputs:
    """Random normalized views shaped like a loader batch (view-major, L*B large and S*B small), on `device`."""
    generator = torch.Generator().manual_seed(seed)
    memory_format = memory_format_of(channels_last)

    def make(count: int, size: int) -> torch.Tensor:
        images = torch.randn(count * batch_size, 3, size, size, generator=generator)
        return images.to(device).contiguous(memory_format=memory_format)

    small = make(views.num_small, views.small_size) if views.num_small else None
    return StepInputs(make(views.num_large, views.large_size), small, views.num_large, views.num_small)


def standalone_context(model: ModelConfig, loss: LossConfig, optim: OptimConfig, *,
                       device: torch.device | str, precision: str, channels_last: bool, compiled: bool,
                       lr: float = 1e-3, seed: int = 0, compile_backend: str = "inductor",
                       compile_mode: str = "default", compile_scope: str = "forward") -> StepContext:
    """A single-process `StepContext` built as the trainer builds its own (networks, LARS, compiled forward).

    `compiled` compiles the step like the trainer (`relic_fast.compiling.compile_step`, static shapes:
    the two view resolutions become two static graphs; `compile_backend`, `compile_mode` and
    `compile_scope` as there). The
    weights depend on `seed` only, so two contexts with the same seed start from identical networks
    whatever their precision or memory format.
    """
    device = torch.device(device)
    configure_cuda_math(device)  # as the trainer sets it
    torch.manual_seed(seed)
    online, target = build_networks(model)
    memory_format = memory_format_of(channels_last)
    online = online.to(device, memory_format=memory_format)
    target = target.to(device, memory_format=memory_format)
    optimizer = build_lars(online, optim, lr)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    forward = forward_loss
    if compiled:
        forward = compile_step(forward_loss, [online, target], mode=compile_mode, scope=compile_scope,
                               backend=compile_backend)
    return StepContext(online=MultiViewOnline(online), online_module=online, target=target, optimizer=optimizer,
                       scaler=scaler, forward=forward, loss=loss, precision=precision, device=device)
