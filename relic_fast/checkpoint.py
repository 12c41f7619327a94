"""Checkpoints: atomic writes, rotation, safe loading, integrity checks and fallback to the previous good one.

A checkpoint is one `torch.save` file `RUN_DIR/checkpoints/step-<step>.pt` holding everything a run
needs to continue as if it had not stopped: online and target weights, optimizer and grad-scaler
state, step and epoch, RNG states, the data loader's position (a string), and the resolved config
(plain values). Only tensors and plain values, so it loads with `torch.load(weights_only=True)`; a
file that needs pickled code to load is refused, never executed. It is written to a temporary file,
fsync'ed, then renamed, so a crash or a full disk never leaves a partial file under a checkpoint's
name (nor a temporary file behind); a file that still fails to load (disk corruption, truncation) is
reported with its path and the previous checkpoint is used instead.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from relic_fast.errors import NO_SPACE_ERRNOS, CheckpointError, NoSpaceError, ResumeMismatchError
from relic_fast.config import config_from_dict
from relic_fast.models import build_encoder

__all__ = ["CheckpointError", "checkpoint_dir", "checkpoint_path", "list_checkpoints", "save_checkpoint",
           "read_checkpoint", "latest_checkpoint", "check_resumable", "resolve_checkpoint_file",
           "encoder_from_checkpoint"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


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
    """Write `state` atomically as the checkpoint of `step`, then delete all but the newest `keep`.

    A full disk raises `NoSpaceError` (folder, bytes needed and free); the temporary file is removed
    and the previous checkpoints are untouched (old ones are deleted only after the new one is in place)."""
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
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(err, Exception) and (full := _no_space(err, target, payload)) is not None:
            raise full from err
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def _no_space(error: Exception, target: Path, payload: dict[str, Any]) -> NoSpaceError | None:
    """A `NoSpaceError` for a failed write if the disk is full, else None (some other failure).

    torch's zip writer reports a full disk as a bare RuntimeError ("file write failed"), so the free
    space, measured after the partial file is removed, decides as well as the errno."""
    folder = target.parent
    needed, free = payload_bytes(payload), shutil.disk_usage(folder).free
    if getattr(error, "errno", None) not in NO_SPACE_ERRNOS and free >= needed:
        return None
    kept = [p.name for p in list_checkpoints(folder.parent)]
    previous = f"the previous checkpoints are intact (newest: {kept[-1]})" if kept else "no earlier checkpoint exists"
    return NoSpaceError(f"{folder}: writing {target.name} needs about {needed:,} bytes ({needed / 2**20:,.1f} MiB), "
                        f"{free:,} bytes ({free / 2**20:,.1f} MiB) are free; {previous}. Free some space (or lower "
                        f"train.keep_checkpoints), then --resume")


def payload_bytes(obj: Any) -> int:
    """About how many bytes `torch.save(obj)` writes: the tensors' storages (each once) and the strings."""
    seen: set[int] = set()

    def size(item: Any) -> int:
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() in seen:
                return 0
            seen.add(storage.data_ptr())
            return storage.nbytes()
        if isinstance(item, dict):
            return sum(size(k) + size(v) for k, v in item.items())
        if isinstance(item, (list, tuple)):
            return sum(size(v) for v in item)
        if isinstance(item, (str, bytes)):
            return len(item)
        return 8

    return size(obj)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file on the CPU, raising `CheckpointError` naming it if it is unusable.

    Loads with `weights_only=True`: a file whose unpickling would import or call code (a crafted
    or foreign pickle) is refused before anything in it runs."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols; the error says enough
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSAFE_GLOBAL.search(str(err))
        what = f"it would import {found.group(1)}" if found else "it holds pickled code or objects"
        raise CheckpointError(f"{path}: refused to load: {what}; a relic-fast checkpoint holds only tensors and "
                              f"plain values, so this file was not written by relic-fast (or was altered). "
                              f"Nothing in it was run") from None
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


RESUME_FIXED = ("model", "train.batch_size")
"""Config sections and keys a resumed run must keep: the weights' shapes and the data position per sample."""


def check_resumable(path: Path, state: dict[str, Any], config: dict[str, dict[str, Any]], world_size: int) -> None:
    """Raise `ResumeMismatchError` naming every key of `RESUME_FIXED` (and the rank count) that `config`
    changes from the run saved in `state` (read from `path`)."""
    saved = state["config"]
    changed = []
    for item in RESUME_FIXED:
        section, _, key = item.partition(".")
        old, new = saved.get(section, {}), config.get(section, {})
        for name in ([key] if key else sorted(set(old) | set(new))):
            if _plain(old.get(name)) != _plain(new.get(name)):
                changed.append(f"{section}.{name} = {old.get(name)!r} in the checkpoint, {new.get(name)!r} now")
    if state["world_size"] != world_size:
        changed.append(f"{state['world_size']} rank(s) in the checkpoint, {world_size} now (the data position "
                       f"is saved per rank)")
    if changed:
        raise ResumeMismatchError(f"{path}: --resume cannot continue this run with the given config: "
                                  f"{'; '.join(changed)}. Resume with the saved config (config.toml in the run "
                                  f"folder), or start a new run in another --out folder")


def _plain(value: Any) -> Any:
    """Tuples as lists, so a config read back from a checkpoint compares equal to a fresh one."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


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

    file = resolve_checkpoint_file(path)
    state = read_checkpoint(file)
    config = config_from_dict(state["config"], source=f"{file} (saved config)", warn_legacy=False)
    encoder = build_encoder(config.model.encoder, config.model.width, config.model.small_stem)
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["online"].items() if k.startswith(prefix)}
    encoder.load_state_dict(weights)
    return encoder, config
