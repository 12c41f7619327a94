"""Process-group set-up for `torchrun` (NCCL on GPUs, gloo on CPUs) and the few collectives we need.

A single-process run needs none of this: every helper degrades to rank 0 of a world of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank, the world size, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, logs and the display."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as `torchrun` sets them in the environment, readable before (and without)
    joining the process group: who prints, who locks, and which rank an error came from."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launch_local_rank() -> int:
    """This process's rank on its node as `torchrun` sets it (0 single-process): which GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_world(device: torch.device) -> World:
    """Join the process group `torchrun` describes in the environment (or stay single-process), the
    networks on `device` (the run plan's: `relic_fast.run_plan`)."""
    rank, world_size = launch_rank()
    local_rank = launch_local_rank()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return World(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def close_world() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over ranks (identity in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def same_on_every_rank(value) -> bool:
    """Whether every rank holds an equal `value` (always True in a single process); a collective call."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        values: list = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
        return all(v == values[0] for v in values)
    return True


def control_group():
    """A gloo process group of every rank, for small host-side agreements (the stop flag) that must
    not queue behind, or sync with, the device collectives of the default group; None in a single process.

    Every rank must call this at the same point (creating a group is itself collective)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    return dist.new_group(backend="gloo")


def wait_for_all(group) -> None:
    """Block until every rank of `group` (a `control_group`) gets here."""
    dist.barrier(group=group)


def all_reduce_max_async(tensor: torch.Tensor, group):
    """Start an element-wise max of the CPU `tensor` over `group` in place; returns the work to `wait()` on."""
    return dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group, async_op=True)


def all_gather_rows(rows: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's `rows` (N_r, ...) concatenated in rank order on every rank; the N_r may differ.

    Collectives need equal shapes, so the counts travel first and each rank pads to the largest."""
    if not world.distributed:
        return rows
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]  # note: a host sync; callers gather once per monitor pass
    padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])
