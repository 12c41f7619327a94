"""How the training step is compiled: `train.compile_mode`, `train.compile_scope`, `train.compile_cache`.

`compile_step` is the one place that calls `torch.compile` for the step, used by the trainer and by
the standalone step of the benchmarks (`relic_fast.synthetic`), so both compile the same way.

- Scope `forward`: the whole loss forward (online over every view, target, loss) as static-shape
  graphs, one per view resolution (`dynamic=False`).
- Scope `blocks` (regional compilation): each residual block is compiled on its own and the stems,
  heads and loss run eager. Blocks of the same shape share one compiled graph (parameters are graph
  inputs), so the warm-up compiles a few distinct blocks instead of the whole network.
- Mode: torch.compile's own (`reduce-overhead` replays the compiled graphs as CUDA graphs;
  `max-autotune` also benchmarks kernel choices while compiling).
- Cache: inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) pointed at a folder of
  the run, so that `--resume` and later runs that name the same folder start warm.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""Inductor reads its cache root from this variable at every lookup (Triton's cache lives under it
unless TRITON_CACHE_DIR says otherwise)."""

BLOCK_RECOMPILE_LIMIT = 64
"""Dynamo's per-code-object limit on compiled variants while residual blocks are compiled one by one.
One `forward` code object serves every block: each distinct block shape, view resolution and grad
mode (the target runs without grad) is one variant, more than Dynamo's default of 8, past which it
would run the rest eager without saying so in the step's figures."""


def compile_cache_folder(setting: str, run_dir: Path) -> Path | None:
    """`train.compile_cache` as a folder: empty -> None (inductor's default cache), a relative path
    -> inside the run folder, an absolute path -> as is."""
    if not setting:
        return None
    folder = Path(setting)
    return folder if folder.is_absolute() else Path(run_dir) / folder


def use_compile_cache(folder: Path) -> Path:
    """Point inductor's on-disk caches at `folder` (created). Call before the process compiles anything."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(folder)
    return folder


def residual_blocks(networks: Iterable[nn.Module]) -> list[nn.Module]:
    """Every torchvision BasicBlock / Bottleneck inside `networks`, in module order."""
    return [module for network in networks for module in network.modules()
            if isinstance(module, (BasicBlock, Bottleneck))]


def compile_step(forward: Callable[..., torch.Tensor], networks: Iterable[nn.Module], *, mode: str = "default",
                 scope: str = "forward", backend: str = "inductor") -> Callable[..., torch.Tensor]:
    """The step's forward compiled as `scope` says (see the module docstring); `networks` are the online
    and target networks whose residual blocks scope `blocks` compiles in place."""
    options: dict = {"dynamic": False, "backend": backend}
    if mode != "default":
        options["mode"] = mode
    if scope == "forward":
        return torch.compile(forward, **options)
    if scope != "blocks":
        raise ValueError(f"unknown compile scope {scope!r}: expected forward or blocks")
    blocks = residual_blocks(networks)
    if not blocks:
        raise ValueError("compile scope 'blocks' found no residual blocks in the networks")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, BLOCK_RECOMPILE_LIMIT)
    for block in blocks:
        block.compile(**options)
    return forward
