"""What a pretraining checkpoint holds, and how a resume finds it and puts it back.

`training_state` is the checkpoint's contents: the networks, optimizer, scaler, online probe, and every rank's
data position and random state (each rank draws its own sampled negatives). `find_saved_run` picks the
checkpoint a `--resume` continues from (the newest usable one, the same on every rank) and has the resume rule
(`relic_fast.resume_rule`) judge it before anything is loaded; `load_saved_run` puts it back, the optimizer
under the configured hyper-parameters and the online probe unless it must restart; the data position goes to
the loader when the trainer builds it (`SavedRun.loader_state`). The trainer writes the checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import torch

from relic_fast.checkpoint import check_resumable, latest_checkpoint
from relic_fast.distributed import World, same_on_every_rank
from relic_fast.errors import ResumeMismatchError
from relic_fast.online_probe import OnlineProbe
from relic_fast.resume_rule import Change, RunIdentity
from relic_fast.step import StepContext


@dataclass(frozen=True)
class SavedRun:
    """The checkpoint a resume continues from: its path, its contents, and every change the resume rule found
    between it and this run (the refused ones go on only because `--accept-change` named them)."""

    path: Path
    state: dict[str, Any]
    changes: list[Change]

    @property
    def step(self) -> int:
        """The step the saved run had reached."""
        return self.state["step"]

    @property
    def accepted_changes(self) -> list[Change]:
        """The refused changes this resume goes on with (`--accept-change`)."""
        return [change for change in self.changes if change.refused]

    def loader_state(self, rank: int) -> str | None:
        """Rank `rank`'s saved data position; None when an accepted change of the data or its order restarts the
        data at the saved step (the saved position belongs to the old order)."""
        if any(change.rule.restarts_data for change in self.accepted_changes):
            return None
        return self.state["loader"][rank]


def find_saved_run(out_dir: Path, identity: RunIdentity, world: World,
                   accept_changes: Collection[str] = ()) -> SavedRun | None:
    """The newest usable checkpoint of `out_dir` (skipping corrupt ones) for the run `identity`; None when there
    is none (rank 0 says the run starts from scratch).

    Every rank must find the same checkpoint (else `ResumeMismatchError`: the folder is not shared by every
    node). A refused change not in `accept_changes` stops here, every one named (`ResumeMismatchError`), before
    anything is loaded or the loader is built."""
    found = latest_checkpoint(out_dir, warn=lambda text: print(text) if world.is_main else None)
    if not same_on_every_rank(found[0].name if found else None):
        raise ResumeMismatchError(f"--resume: the ranks found different checkpoints in {out_dir}; with "
                                  f"several nodes, --out must be a folder that every node shares (NFS, Lustre, ...)")
    if found is None:
        if world.is_main:
            print(f"--resume: no checkpoint in {out_dir}, starting from scratch")
        return None
    path, state = found
    return SavedRun(path, state, check_resumable(path, state, identity, accept_changes))


def training_state(step: int, identity: RunIdentity, context: StepContext, probe: OnlineProbe | None,
                   loader_position: str, world: World) -> dict[str, Any]:
    """A checkpoint's contents at `step`: what the resume rule compares (`identity`), the networks, optimizer,
    fp16 scaler and online probe, and every rank's `loader_position` and random state, gathered in one
    collective (every rank calls this)."""
    per_rank: list[Any] = [(loader_position, rng_state(world.device))]
    if world.distributed:
        gathered: list[Any] = [None] * world.world_size
        torch.distributed.all_gather_object(gathered, per_rank[0])
        per_rank = gathered
    return {"step": step, **identity.to_state(), "online": context.online_module.state_dict(),
            "target": context.target.state_dict(), "optimizer": context.optimizer.state_dict(),
            "scaler": context.scaler.state_dict() if context.scaler else None,
            "rng": [rank_rng for _, rank_rng in per_rank], "loader": [loader for loader, _ in per_rank],
            "online_probe": probe.state() if probe is not None else None}


def load_saved_run(saved: SavedRun, context: StepContext, probe: OnlineProbe | None, world: World) -> list[str]:
    """Put `saved` back into the step's networks, optimizer and fp16 scaler, the online probe and this rank's
    random state; returns what the resume should say (an online probe that restarts from zero, and why)."""
    state = saved.state
    context.online_module.load_state_dict(state["online"])
    context.target.load_state_dict(state["target"])
    load_optimizer_state(context.optimizer, state["optimizer"])
    if context.scaler is not None and state["scaler"] is not None:
        context.scaler.load_state_dict(state["scaler"])
    notes = []
    if probe is not None:
        why = probe_restart_reason(probe, state.get("online_probe"), saved.changes)
        if why is None:
            probe.restore(state["online_probe"])
        else:
            notes.append(f"online probe restarts from zero: {why}")
    restore_rng(state["rng"], world.rank, world.device)
    return notes


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load the saved optimizer state (momentum buffers) under the optimizer's configured hyper-parameters: a
    loaded state dict brings its own weight decay, momentum and trust coefficient, which a resume that accepted
    new ones must not silently keep (with no accepted change the two agree; the lr is set every step)."""
    configured = [{key: value for key, value in group.items() if key != "params"}
                  for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, settings in zip(optimizer.param_groups, configured):
        group.update(settings)


def probe_restart_reason(probe: OnlineProbe, saved: dict[str, Any] | None, changes: list[Change]) -> str | None:
    """Why the online probe restarts from zero instead of continuing from `saved` (its checkpointed state), or
    None when it continues: a probe that was off, changed settings or other classes would not be the head
    trained so far."""
    changed = [change.short() for change in changes if change.key.startswith("eval.online_probe")]
    if saved is None:
        return "it was off in the checkpoint"
    if changed:
        return ", ".join(changed)
    if saved["module"]["linear.weight"].shape != probe.linear.weight.shape:
        return "the number of classes changed"
    return None


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state: the CPU generator's, and the device's on CUDA (what `restore_rng` takes)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(saved: dict[str, Any] | list[dict[str, Any]], rank: int, device: torch.device) -> None:
    """Rank `rank`'s saved random state (each rank draws its own sampled negatives). An older checkpoint holds
    rank 0's alone, which every rank then takes; a rank the checkpoint did not have (more ranks, accepted) keeps
    its fresh per-rank seed."""
    if isinstance(saved, list):
        saved = saved[rank] if rank < len(saved) else None
    if saved is None:
        return
    torch.set_rng_state(saved["cpu"])
    if "cuda" in saved and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda"], device)
