"""Checkpoints: atomic writes, rotation, safe loading, integrity checks and fallback to the previous good one.

A checkpoint is one `torch.save` file `RUN_DIR/checkpoints/step-<step>.pt` holding everything a run
needs to continue as if it had not stopped: online and target weights, optimizer and grad-scaler
state, step and epoch, every rank's RNG state and data loader position (a string), and what the resume
rule compares (`resume_rule.RunIdentity`: the config as asked and as resolved, the dataset's fingerprint,
the rank count; plain values). Only tensors and plain values, so it loads with `torch.load(weights_only=True)`; a
file that needs pickled code to load is refused, never executed, and on a torch older than 2.6, whose
weights-only loading a crafted file can defeat (CVE-2025-32434), nothing is loaded at all
(`load_weights_only`, which every load of a file a user hands us goes through). It is written to a
temporary file, fsync'ed, then renamed (`write_atomically`), so a crash or a full disk never leaves a
partial file under a checkpoint's name; the temporary file of a write cut short by SIGKILL is removed at
the run's next start (`remove_interrupted_writes`). A file that is not readable as a checkpoint (disk
corruption, truncation, a foreign file) is reported with its path and the previous checkpoint is used
instead; one that cannot be read right now (permissions, a stale NFS handle, memory) stops the resume,
since the file itself may be fine. Rotation keeps the newest `keep` readable checkpoints: an unreadable
file never takes a good one's place.
"""

from __future__ import annotations

import errno
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Collection

import torch

from dali_pipelines.atomic import TEMPORARY_PREFIX, write_atomically
from relic_fast.errors import NO_SPACE_ERRNOS, CheckpointError, NoSpaceError, ResumeMismatchError, UnsafeTorchError
from relic_fast.config import config_from_dict
from relic_fast.models import build_encoder
from relic_fast.resume_rule import Change, RunIdentity, refusal, resume_changes

__all__ = ["CheckpointError", "UnreadableCheckpointError", "checkpoint_dir", "checkpoint_path", "list_checkpoints",
           "save_checkpoint", "read_checkpoint", "latest_checkpoint", "check_resumable", "resolve_checkpoint_file",
           "encoder_from_checkpoint", "load_weights_only",
           "remove_interrupted_writes", "prune_checkpoints", "step_of"]

FORMAT_VERSION = 1
SAFE_TORCH = (2, 6)
"""The oldest torch whose `torch.load(weights_only=True)` runs no code of the file (CVE-2025-32434 was fixed
in 2.6.0); pyproject.toml requires it too."""
_NAME = re.compile(r"^step-(\d+)\.pt$")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_INTERRUPTED_WRITE = re.compile(rf"^{re.escape(TEMPORARY_PREFIX)}.*\.pt$")
_NOT_A_CHECKPOINT = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, LookupError)
"""What torch.load raises for a file that is not a readable checkpoint: a damaged or foreign pickle, a cut-short
file, a broken zip archive (torch's reader raises RuntimeError), bytes that decode to nothing sensible."""


class UnreadableCheckpointError(CheckpointError):
    """A file that is not readable as a relic-fast checkpoint (corrupt, truncated, foreign, or pickled code):
    the only kind `latest_checkpoint` skips for an older checkpoint."""


def torch_loads_safely() -> bool:
    """Whether this torch's `torch.load(weights_only=True)` is safe against crafted files (torch >= 2.6)."""
    found = re.match(r"(\d+)\.(\d+)", str(torch.__version__))
    return found is not None and (int(found.group(1)), int(found.group(2))) >= SAFE_TORCH


def load_weights_only(path: Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: every load of a file a user hands us goes through here.

    On a torch older than `SAFE_TORCH` a crafted file can run code even with weights_only=True
    (CVE-2025-32434), so there `UnsafeTorchError` is raised and torch.load is never called. `mmap` maps the
    tensors instead of reading them (only the pickle is read): a cheap check that a file loads."""
    if not torch_loads_safely():
        raise UnsafeTorchError(f"torch {torch.__version__} is installed: its torch.load(weights_only=True) can be "
                               f"made to run code by a crafted file (CVE-2025-32434, fixed in torch 2.6), so {path} "
                               f"was not loaded; install torch>=2.6 (pip install -U 'torch>=2.6' 'torchvision>=0.21')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about foreign pickle protocols; the error says enough
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def remove_interrupted_writes(run_dir: Path, report: Callable[[str], None] | None = None) -> list[Path]:
    """Delete the temporary files (`.tmp-*.pt`) that checkpoint writes cut short by SIGKILL left in the run's
    checkpoint folder; returns them.

    Call it only while holding the run's lock (`runlock`): a live run's temporary file is a write in progress.
    `report` gets one line naming what was removed, if anything."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    leftovers = sorted(p for p in folder.iterdir() if _INTERRUPTED_WRITE.match(p.name) and p.is_file())
    for path in leftovers:
        path.unlink(missing_ok=True)
    if leftovers and report is not None:
        report(f"removed {len(leftovers)} temporary file(s) of interrupted checkpoint writes in {folder}: "
               f"{', '.join(p.name for p in leftovers)}")
    return leftovers


def checkpoint_dir(run_dir: Path) -> Path:
    """Folder of a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """Path of the checkpoint taken after optimizer step `step`."""
    return checkpoint_dir(run_dir) / f"step-{step:09d}.pt"


def step_of(path: Path) -> int:
    """The step in a checkpoint's file name (`step-<step>.pt`)."""
    found = _NAME.match(Path(path).name)
    if found is None:
        raise ValueError(f"{path}: not a checkpoint file name (step-<step>.pt)")
    return int(found.group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first (by step)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=step_of)


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write `state` atomically as the checkpoint of `step`, then delete older ones so that `keep` readable
    checkpoints remain (`prune_checkpoints`).

    A full disk raises `NoSpaceError` (folder, bytes needed and free); the temporary file is removed
    and the previous checkpoints are untouched (old ones are deleted only after the new one is in place)."""
    target = checkpoint_path(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_VERSION, **state}
    try:
        write_atomically(target, lambda handle: torch.save(payload, handle))
    except Exception as err:
        if (full := _no_space(err, target, payload)) is not None:
            raise full from err
        raise
    prune_checkpoints(run_dir, target, keep)
    return target


def prune_checkpoints(run_dir: Path, newest: Path, keep: int) -> list[Path]:
    """Delete the checkpoints older than the `keep` newest readable ones up to `newest` (just written, which
    counts as one and is never deleted); returns what was deleted.

    Only readable files count, so a corrupt one never takes a good one's place. Files of a later step than
    `newest` are neither counted nor deleted: the resume skipped them as unreadable (it takes the newest that
    loads), and counting them would push out good checkpoints, the one just written first. An unreadable file
    stays until it is older than every kept checkpoint (then it goes with them), so it can still be inspected."""
    older = [p for p in list_checkpoints(run_dir) if step_of(p) < step_of(newest)]
    readable, deleted = 1, []
    for path in reversed(older):
        if readable >= keep:
            path.unlink(missing_ok=True)
            deleted.append(path)
        elif _counts_as_readable(path):
            readable += 1
    return deleted


def _counts_as_readable(path: Path) -> bool:
    """Whether rotation counts `path` as a checkpoint to keep: False only for a file known to be unreadable.

    Loads the pickle with the tensors memory-mapped (not read), so this costs little. A file that cannot be
    checked now (another error, or a torch that must not load anything) counts, as every file did before."""
    try:
        read_checkpoint(path, mmap=True)
    except UnreadableCheckpointError:
        return False
    except (CheckpointError, UnsafeTorchError):
        pass  # cannot be checked now: it counts, as every file did before rotation checked
    return True


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


def read_checkpoint(path: Path, mmap: bool = False, required: str = "online") -> dict[str, Any]:
    """Load one checkpoint file on the CPU, raising `CheckpointError` naming it if it is unusable.

    Loads with `weights_only=True` (`load_weights_only`): a file whose unpickling would import or call
    code (a crafted or foreign pickle) is refused before anything in it runs. A file that is not
    readable as a checkpoint raises `UnreadableCheckpointError`; one that cannot be read now (an OSError
    of the file system, no memory) raises a plain `CheckpointError` with that cause, since the file may
    be intact. `mmap` maps the tensors instead of reading them. `required`: the key that says which kind of
    checkpoint it must be ("online": pretraining's; a linear evaluation's have their own)."""
    path = Path(path)
    try:
        state = load_weights_only(path, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = _UNSAFE_GLOBAL.search(str(err))
        what = f"it would import {found.group(1)}" if found else "it holds pickled code or objects"
        raise UnreadableCheckpointError(f"{path}: refused to load: {what}; a relic-fast checkpoint holds only "
                                        f"tensors and plain values, so this file was not written by relic-fast (or "
                                        f"was altered). Nothing in it was run") from None
    except OSError as err:
        if err.errno == errno.EINVAL:  # torch seeks before the start of a file cut short
            raise UnreadableCheckpointError(f"{path}: unreadable checkpoint (truncated: {err})") from None
        name = errno.errorcode.get(err.errno or 0, type(err).__name__)
        raise CheckpointError(f"{path}: cannot read it now ({name}: {err.strerror or err}); the file itself may be "
                              f"intact, so no older checkpoint was used instead: fix the access (permissions, the "
                              f"network file system) and run again") from None
    except MemoryError:
        raise CheckpointError(f"{path}: out of memory while loading it ({path.stat().st_size:,} bytes on disk); "
                              f"no older checkpoint was used instead: free memory and run again") from None
    except _NOT_A_CHECKPOINT as err:
        raise UnreadableCheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION or required not in state:
        raise UnreadableCheckpointError(f"{path}: not a relic-fast checkpoint (format {FORMAT_VERSION})")
    return state


def latest_checkpoint(run_dir: Path, warn=print, required: str = "online") -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of the run that loads, skipping (and reporting) ones unreadable as checkpoints;
    None if none exist.

    Only `UnreadableCheckpointError` is skipped: a file that cannot be read now (permissions, a stale NFS
    handle, memory) stops with its own error, as does a torch too old to load safely; falling back to an
    older checkpoint would silently throw away the newer steps."""
    candidates = list_checkpoints(run_dir)
    errors = []
    for path in reversed(candidates):
        try:
            return path, read_checkpoint(path, required=required)
        except UnreadableCheckpointError as err:
            errors.append(str(err))
            warn(f"warning: {err}; falling back to the previous checkpoint")
    if errors:
        raise CheckpointError("no usable checkpoint in " + str(checkpoint_dir(run_dir)) + ":\n  "
                              + "\n  ".join(errors))
    return None


def check_resumable(path: Path, state: dict[str, Any], now: RunIdentity,
                    accepted: Collection[str] = ()) -> list[Change]:
    """The changes `--resume` goes on with from the run saved in `state` (read from `path`) to the run `now`:
    those the rule lets change, and refused ones that `accepted` (`--accept-change`) names.

    Raises `ResumeMismatchError` naming every other refused change in one line, with the ways on
    (`relic_fast.resume_rule`: one rule for every config key, the images and the rank count)."""
    changes = resume_changes(RunIdentity.from_state(state), now)
    blocked = [c for c in changes if c.refused and not (c.key in accepted and c.rule.acceptable)]
    if blocked:
        raise ResumeMismatchError(refusal(path, blocked))
    return changes


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
