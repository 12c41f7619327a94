"""The run plan: every "auto" of a config turned into the choice that runs, decided once.

A config says what the user asked for (`train.device = "auto"`, `loss.implementation = "auto"`, ...);
the plan says what this process does with it on this machine: which torch device, whether DALI runs on
a GPU and which one, whether the step is compiled, which loss and LARS implementation, which resize
interpolation, at which precision. Every entry point (pretrain, profile, selftest, evaluation,
benchmarks) asks `resolve_plan` and never re-derives a choice, and the trainer writes the plan next to
the config (`plan.toml`) so a run folder records what ran; `relic-fast info --config C` shows the plan of
a recipe on this machine without running it. Normalization is not part of the plan: DALI always hands
over uint8 pixels and `step.prepare_views` normalizes them on the trainer's device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dali_pipelines.recipe import default_interpolation
from relic_fast.config import Config
from relic_fast.config_fields import toml_value
from relic_fast.devices import dali_device_for, torch_device_for
from relic_fast.distributed import launch_local_rank
from relic_fast.loss import choose_loss_implementation
from relic_fast.optim import choose_lars_implementation


@dataclass(frozen=True)
class RunPlan:
    """What a run does on this machine, every choice concrete."""

    device: str
    """The torch device of the networks and the step: "cpu" or "cuda:<local rank>"."""

    dali_device_id: int | None
    """GPU index of the DALI pipelines (mixed decoder, GPU operators), None for the CPU pipeline."""

    compile: bool
    """Whether the step's forward and loss go through torch.compile."""

    loss_implementation: str
    """"reference" (plain PyTorch) or "fused" (the Triton kernel)."""

    lars_implementation: str
    """"reference" (BYOL's LARS in torch multi-tensor ops) or "apex" (apex's FusedLARS)."""

    interpolation: str
    """Resize interpolation of the crops: "linear" or "cubic"."""

    precision: str
    """Autocast precision of the step: "bf16", "fp16" or "fp32"."""

    @property
    def torch_device(self) -> torch.device:
        """`device` as a `torch.device`."""
        return torch.device(self.device)

    def to_toml(self) -> str:
        """The plan as a `[plan]` TOML table (None written as -1 for the CPU pipeline)."""
        lines = ["# what ran: every \"auto\" of config.toml resolved on this machine", "[plan]"]
        lines += [f"{key} = {toml_value(-1 if value is None else value)}"
                  for key, value in dataclasses.asdict(self).items()]
        return "\n".join(lines) + "\n"

    def rows(self) -> list[tuple[str, str]]:
        """(name, value) pairs for a printed table."""
        return [(key, "cpu pipeline" if key == "dali_device_id" and value is None else str(value))
                for key, value in dataclasses.asdict(self).items()]


def resolve_plan(config: Config, *, local_rank: int | None = None) -> RunPlan:
    """Turn `config`'s choices into the plan this process runs (rank `local_rank` of its node; default:
    the rank `torchrun` gave this process)."""
    device = torch_device_for(config.train.device, launch_local_rank() if local_rank is None else local_rank)
    dali_device_id = dali_device_for(config.data.device, device)
    compile_choice = config.train.compile
    interpolation = config.views.interpolation
    if interpolation == "auto":
        interpolation = default_interpolation("gpu" if dali_device_id is not None else "cpu")
    return RunPlan(
        device=str(device), dali_device_id=dali_device_id,
        compile=compile_choice == "on" or (compile_choice == "auto" and device.type == "cuda"),
        loss_implementation=choose_loss_implementation(config.loss.implementation, device),
        lars_implementation=choose_lars_implementation(config.optim.implementation),
        interpolation=interpolation,
        precision=config.train.precision)


def planned_config(config: Config, plan: RunPlan) -> Config:
    """`config` with the plan's choices written in, so that what runs below reads no "auto"."""
    return config.replace(
        views=dataclasses.replace(config.views, interpolation=plan.interpolation),
        loss=dataclasses.replace(config.loss, implementation=plan.loss_implementation),
        optim=dataclasses.replace(config.optim, implementation=plan.lars_implementation))
