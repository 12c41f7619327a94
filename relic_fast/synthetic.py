"""Training steps without a data pipeline: synthetic views on the device and a standalone step context.

What the model alone consumes (images/s when data costs nothing) is the yardstick every input
pipeline is measured against. The step benchmark (`relic_fast.bench.step`), the profiler's
consumption rate and the self-test's compiled-vs-eager check all build the trainer's step
(`relic_fast.step.train_step`) from these two functions, so they time and test exactly what the
trainer runs: the same networks, LARS, EMA and (optionally compiled) `forward_loss`.
"""

from __future__ import annotations

import torch

from relic_fast.config import LossConfig, ModelConfig, OptimConfig, ViewsConfig
from relic_fast.step import StepContext, StepInputs, build_step_context, memory_format_of


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
    """A single-process `StepContext` from the trainer's own builder (`step.build_step_context`).

    The weights depend on `seed` only, so two contexts with the same seed start from identical networks
    whatever their precision or memory format; `compile_backend`, `compile_mode` and `compile_scope` as
    in `relic_fast.compiling.compile_step`."""
    torch.manual_seed(seed)
    return build_step_context(model, loss, optim, device=torch.device(device), precision=precision,
                              channels_last=channels_last, compiled=compiled, lr=lr, compile_backend=compile_backend,
                              compile_mode=compile_mode, compile_scope=compile_scope)
