"""Checkpoints: atomic writes, rotation, integrity checks and fallback to the previous good one.

A checkpoint is one `torch.save` file `RUN_DIR/checkpoints/step-<step>.pt` holding everything a run
needs to continue as if it had not stopped: online and target weights, optimizer and grad-scaler
state, step and epoch, RNG states, the data loader's position, and the resolved config. It is
written to a temporary file, fsync'ed, then renamed, so a crash never leaves a partial file under a
checkpoint's name; a file that still fails to load (disk corruption, truncation) is reported with
its path and the previous checkpoint is used instead.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read; the message names the file(s) and why."""


def checkpoint_dir(run_dir: Path) -> Path:
    """Folder of a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Path of the checkpoint taken after optimizer step `step`."""
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first (by step)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write `state` atomically as the checkpoint of `step`, then delete all but the newest `keep`."""
    target = checkpoint_path(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file on the CPU, raising `CheckpointError` naming it if it is unusable."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or "online" not in state:
        raise CheckpointError(f"{path}: not a relic-fast checkpoint (format {FORMAT_VERSION})")
    return state


def latest_checkpoint(run_dir: Path, warn=print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of the run that loads, skipping (and reporting) broken ones; None if none exist."""
    candidates = list_checkpoints(run_dir)
    errors = []
    for path in reversed(candidates):
        try:
            return path, read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            warn(f"warning: {err}; falling back to the previous checkpoint")
    if errors:
        raise CheckpointError("no usable checkpoint in " + str(checkpoint_dir(run_dir)) + ":\n  "
                              + "\n  ".join(errors))
    return None


def resolve_checkpoint_file(path: Path) -> Path:
    """A checkpoint file given either directly or as a run folder (its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path}: run folder holds no checkpoints")
        return found[0]
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def encoder_from_checkpoint(path: Path):
    """The online encoder of a pretraining checkpoint (file or run folder), and the run's config."""
    from relic_fast.config import config_from_dict
    from relic_fast.models import build_encoder

    file = resolve_checkpoint_file(path)
    state = read_checkpoint(file)
    config = config_from_dict(state["config"], source=f"{file} (saved config)")
    encoder = build_encoder(config.model.encoder, config.model.width, config.model.small_stem)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["online"].items() if k.startswith(prefix)}
    encoder.load_state_dict(weights)
    return encoder, config
