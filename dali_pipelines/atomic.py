"""Writing a file so that readers see the old file or the new one whole, never a part: the temporary file
beside the target, then one `os.replace`.

The one implementation every writer of the project goes through (checkpoints, exports, evaluation
reports, shards and their indexes, shard manifests, file lists, saliency masks, the readers' cache files,
plots). It lives in the lowest layer because the data side, which imports no `relic_fast`, writes files
too.

The temporary file is `.tmp-<random><target's suffix>` in the target's folder: the same file system, so
the rename is atomic; a fresh name per write (`mkstemp`, created exclusively), so two writers of one
target (ranks on several hosts sharing an NFS home, two tools run at once) never write into each other's
file, and nothing planted under a predictable name beside the target (a symlink) is ever written
through. `relic_fast.checkpoint.remove_interrupted_writes` finds what a SIGKILL left of a checkpoint
write by that prefix.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

TEMPORARY_PREFIX = ".tmp-"
"""How the name of every temporary file starts (hidden, and recognisable as a write cut short)."""


def file_mode() -> int:
    """The permissions a plain `open(path, "w")` would give a new file here (0o666 less the umask): a temporary
    file is created 0o600, and what it becomes should not be more private than a file written directly."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def staged_file(target: str | os.PathLike, write: Callable[[IO[bytes]], None], *, fsync: bool = True) -> Iterator[Path]:
    """A temporary file in `target`'s folder holding what `write(handle)` wrote, for the caller to `os.replace`
    over `target`; removed when the block ends if it is still there (a failure, or no rename).

    For a caller that renames several files only once all of them are written (an export and its sidecar);
    one file: `write_atomically`. `fsync` (default) flushes the data to the disk before the rename, so a power
    cut cannot leave an empty file under the target's name; pass False only where a rewrite is cheap and an
    fsync per file is not (one mask per image)."""
    target = Path(target)
    fd, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=target.suffix, dir=target.parent)
    temporary = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(target: str | os.PathLike, write: Callable[[IO[bytes]], None], *, fsync: bool = True) -> None:
    """Write `target` through `write(handle)` (a binary file) via a temporary file and `os.replace`: a crash or a
    full disk never leaves a partial file under `target`'s name, nor a temporary file behind (a SIGKILL can;
    `staged_file` says what `fsync` is for)."""
    with staged_file(target, write, fsync=fsync) as temporary:
        os.replace(temporary, target)


def write_text_atomically(target: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """`write_atomically` of `text` encoded as UTF-8: the manifests, indexes, lists and reports."""
    data = text.encode("utf-8")
    write_atomically(target, lambda handle: handle.write(data), fsync=fsync)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the complete folder `staging` (a sibling of `target`: renames stay on one file system) at `target`.

    One rename when `target` is absent or an empty folder. Otherwise the old folder is renamed aside, `staging`
    into place, and only then the old one removed: between the two renames `target` is briefly absent (a
    reader reports it), never a mix of old and new files; when the second rename fails the old folder is put
    back rather than leave none. The folder-sized `write_atomically` of `relic-fast pack` and the demo data."""
    staging, target = Path(staging), Path(target)
    try:
        os.rename(staging, target)
        return
    except OSError:
        if not target.exists():
            raise
    old = target.with_name(f".{target.name}.replaced-{secrets.token_hex(4)}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    # The new folder is in place: an old one that cannot be removed is hidden garbage, not a failed replace.
    shutil.rmtree(old, ignore_errors=True)
