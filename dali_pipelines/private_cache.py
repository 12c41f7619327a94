"""The private folder of the files relic-fast writes for DALI to read (the placeholder mask, WebDataset
indexes): one only this user can write to, because DALI reads whatever lies there.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import stat
import tempfile
from pathlib import Path

from dali_pipelines.atomic import write_atomically
from dali_pipelines.formats.base import DatasetError

CACHE_FOLDER = "relic-fast"
"""Folder under `$XDG_CACHE_HOME` (default `~/.cache`) for the files the readers write for DALI."""


def _cache_home() -> Path | None:
    """`$XDG_CACHE_HOME` when it is an absolute path (the XDG rule), else `~/.cache`; None without a home."""
    value = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(value):
        return Path(value)
    try:
        return Path.home() / ".cache"
    except (RuntimeError, KeyError):
        return None


def _check_private(folder: Path) -> None:
    """A `DatasetError` unless `folder` is a folder this user owns and no one else can write to (anyone who
    can write there could plant the files DALI reads)."""
    try:
        info = os.stat(folder)
    except OSError as err:
        problem = f"cannot be inspected ({err.strerror})"
    else:
        problem = ("is not a folder" if not stat.S_ISDIR(info.st_mode)
                   else f"belongs to user id {info.st_uid}, not to you ({os.getuid()})" if info.st_uid != os.getuid()
                   else f"can be written by others (mode {stat.S_IMODE(info.st_mode):o})" if info.st_mode & 0o022
                   else None)
    if problem:
        raise DatasetError(f"{folder}: {problem}; relic-fast keeps the files DALI reads there (placeholder mask, "
                           f"shard indexes) and needs a folder only you can write to: chmod 700 it, remove it, or "
                           f"set XDG_CACHE_HOME")


@functools.cache
def _process_private_dir() -> Path:
    """A fresh 0700 folder of this process (`mkdtemp`: an unpredictable name, nothing to plant), removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="relic-fast-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def private_cache_dir() -> Path:
    """The folder of the files the readers write for DALI to read (the placeholder mask, WebDataset indexes).

    `$XDG_CACHE_HOME/relic-fast` (default `~/.cache/relic-fast`): created 0700 and refused (`DatasetError`)
    unless this user owns it and no one else can write to it, because a fixed name in the shared /tmp can be
    planted by another local user. Per user rather than per process, so every rank and worker of a run (and
    later runs) agree on the paths and reuse the files, which are written under a temporary name and renamed.
    Where no cache folder can be made (a read-only home in a container), a private `mkdtemp` folder of this
    process."""
    home = _cache_home()
    if home is None:
        return _process_private_dir()
    folder = home / CACHE_FOLDER
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # something that is not a folder holds the name: _check_private names it
    except OSError:
        return _process_private_dir()
    _check_private(folder)
    return folder


def placeholder_mask() -> Path:
    """A 1x1 all-foreground PNG read in place of a missing mask, written once into the private cache folder
    (`private_cache_dir`), never under a fixed name in the shared temp dir."""
    path = private_cache_dir() / "placeholder-mask.png"
    if not path.is_file():
        from PIL import Image

        write_atomically(path, lambda handle: Image.new("L", (1, 1), 255).save(handle, format="PNG"))
    return path
