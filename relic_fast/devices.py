"""The device rules: what "auto", "cpu" and "gpu" mean for the networks and for DALI, decided here only.

`relic_fast.run_plan` applies them to a whole config; tools that take a `--device` of their own
(benchmarks, the self-test, saliency masks) apply them to that one choice.
"""

from __future__ import annotations

import torch

from relic_fast.config import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "gpu")
"""The one spelling of a device choice, in TOML (`train.device`, `data.device`) and on the CLI."""


def torch_device_for(choice: str, local_rank: int = 0) -> torch.device:
    """The torch device of a device choice ("auto": the GPU of `local_rank` when CUDA is visible)."""
    if choice not in DEVICE_CHOICES:
        raise ConfigError(f"device {choice!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "auto":
        choice = "gpu" if torch.cuda.is_available() else "cpu"
    if choice == "gpu":
        if not torch.cuda.is_available():
            raise ConfigError("device 'gpu' but no CUDA GPU is visible here; use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def dali_device_for(choice: str, device: torch.device) -> int | None:
    """The DALI device id for `data.device` next to networks on `device` ("auto": follow the networks)."""
    if choice not in DEVICE_CHOICES:
        raise ConfigError(f"data.device {choice!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu" or (choice == "auto" and device.type != "cuda"):
        return None
    if not torch.cuda.is_available():
        raise ConfigError("data.device = 'gpu' but no CUDA GPU is visible here; use 'cpu' or 'auto'")
    return device.index if device.type == "cuda" and device.index is not None else torch.cuda.current_device()
