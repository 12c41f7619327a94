"""Image validation over many files before DALI sees them: check each (`image_check.check_image`), name the bad
ones, drop them, and remember the answer.

`validate_files` checks many files in a process pool with a JSON cache keyed by (path, size,
mtime_ns), so a re-run over an unchanged tree only stats files. `filter_bad_files` is the trainer's
`data.on_bad_file = "skip"` path. Data side: imports no `relic_fast`.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from dali_pipelines.atomic import write_text_atomically
from dali_pipelines.image_check import DEFAULT_MAX_IMAGE_MB, DEFAULT_MAX_PIXELS, ImageCheck, check_image, oversize_reason

CACHE_NAME = ".relic-fast-index-cache.json"
"""File name of the validation cache, kept in the dataset's root folder."""

CACHE_VERSION = 1


def _check_many(paths: list[str], max_pixels: int, min_side: int, max_image_mb: float) -> list[ImageCheck]:
    """Pool task: check a chunk of files (chunks keep inter-process traffic small)."""
    return [check_image(p, max_pixels=max_pixels, min_side=min_side, max_image_mb=max_image_mb) for p in paths]


class ValidationCache:
    """Remembers each file's check keyed by (relative path, size, mtime_ns), as one JSON file.

    Entries made under other validation settings (pixel cap, minimum side) are ignored. Saving
    writes a temporary file and renames it, so concurrent writers never leave a broken cache.
    """

    def __init__(self, path: Path | None, settings: dict[str, Any]):
        self.path = path
        self.settings = settings
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
                if stored.get("version") == CACHE_VERSION and stored.get("settings") == settings:
                    self.entries = stored["entries"]
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}  # an unreadable cache is only a slower run

    def lookup(self, key: str, size: int, mtime_ns: int) -> ImageCheck | None:
        """The stored check of `key` when the file's size and mtime are unchanged, else None."""
        entry = self.entries.get(key)
        if entry is None or entry[0] != size or entry[1] != mtime_ns:
            return None
        return ImageCheck(*entry[2:])

    def store(self, key: str, size: int, mtime_ns: int, check: ImageCheck) -> None:
        """Record the check of `key` at this size and mtime."""
        self.entries[key] = [size, mtime_ns, *check]
        self.dirty = True

    def save(self) -> None:
        """Write the cache atomically (when changed); an unwritable folder only costs the next run's time."""
        if self.path is None or not self.dirty:
            return
        payload = {"version": CACHE_VERSION, "settings": self.settings, "entries": self.entries}
        try:
            # dumps: the C encoder. No fsync: a cache a power cut damaged reads as empty (only a slower run).
            write_text_atomically(self.path, json.dumps(payload, separators=(",", ":")), fsync=False)
        except OSError:
            pass


def default_cache_path(root: Path) -> Path | None:
    """`root/.relic-fast-index-cache.json` when `root` is writable, else one in ~/.cache/relic-fast."""
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    fallback = Path.home() / ".cache" / "relic-fast"
    try:
        fallback.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    name = re.sub(r"[^A-Za-z0-9]+", "_", str(root.resolve())).strip("_")
    return fallback / f"{name}{CACHE_NAME}"


@dataclass
class ValidationResult:
    """Checks of a file list, aligned with it, and how much work the run really did."""

    checks: list[ImageCheck]
    validated: int
    """Files actually opened and decoded in this run (the rest came from the cache)."""
    cached: int
    """Files whose check came from the cache."""

    def rejected(self, files: Sequence[str]) -> list[tuple[str, str]]:
        """(path, reason) of every unusable file, in list order."""
        return [(f, c.reason) for f, c in zip(files, self.checks) if c.reason is not None]


def _stat(path: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of `path`, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _checked(paths: list[str], workers: int, max_pixels: int, min_side: int,
             max_image_mb: float) -> Iterator[tuple[int, ImageCheck]]:
    """Yield `(position, check)` for every path as results arrive, from a process pool when it pays.

    Workers are forked where the platform can (as torch's DataLoader does): they run only PIL code,
    never the parent's CUDA context or threads, and fork does not re-run the caller's main module
    the way spawn does (spawn elsewhere: a script without an `if __name__ == "__main__":` guard
    then breaks the pool). Whatever a broken pool left unchecked is checked in this process.
    """
    chunk = 32
    done = [False] * len(paths)
    if workers > 1 and len(paths) > 2 * chunk:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = {pool.submit(_check_many, paths[s:s + chunk], max_pixels, min_side, max_image_mb): s
                           for s in range(0, len(paths), chunk)}
                for future in as_completed(futures):
                    start = futures[future]
                    for offset, check in enumerate(future.result()):
                        done[start + offset] = True
                        yield start + offset, check
        except BrokenProcessPool:
            warnings.warn("validation worker processes died; checking the remaining files in this "
                          "process (under spawn, guard your script with `if __name__ == '__main__':`)")
    for position, path in enumerate(paths):
        if not done[position]:
            yield position, check_image(path, max_pixels=max_pixels, min_side=min_side, max_image_mb=max_image_mb)


def validate_files(root: str | os.PathLike, files: Sequence[str], *, workers: int | None = None,
                   cache_path: str | os.PathLike | None | bool = True,
                   max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 1,
                   max_image_mb: float = DEFAULT_MAX_IMAGE_MB,
                   on_progress: Callable[[int], None] | None = None) -> ValidationResult:
    """Check every file of `files` (paths relative to `root`, or absolute) in parallel, with a cache.

    `cache_path`: True for `default_cache_path(root)`, False/None for no cache, or a file path.
    `workers`: processes (default: all CPUs). `on_progress(n)` is called as n more files are done.
    Files whose (size, mtime_ns) match the cache are not opened again; an interrupted run keeps
    what it checked. A file over `max_image_mb` MB is rejected from its stat, before the cache is
    asked (so the cap needs no place in the cache's settings) and without being opened.
    """
    root = Path(root)
    if cache_path is True:
        cache_path = default_cache_path(root)
    cache = ValidationCache(Path(cache_path) if cache_path else None,
                            {"max_pixels": max_pixels, "min_side": min_side})
    checks: list[ImageCheck | None] = [None] * len(files)
    todo: list[tuple[int, tuple[int, int]]] = []
    base = str(root)
    for i, name in enumerate(files):
        stat = _stat(os.path.join(base, name))  # os.path, not pathlib: millions of files
        if stat is None:
            checks[i] = ImageCheck("missing: no such file")
        elif (oversize := oversize_reason(stat[0], max_image_mb)) is not None:
            checks[i] = ImageCheck(oversize)
        elif (hit := cache.lookup(name, *stat)) is not None:
            checks[i] = hit
        else:
            todo.append((i, stat))
    if on_progress and len(files) > len(todo):
        on_progress(len(files) - len(todo))
    try:
        paths = [os.path.join(base, files[i]) for i, _ in todo]
        for position, check in _checked(paths, workers or os.cpu_count() or 1, max_pixels, min_side,
                                        max_image_mb):
            i, stat = todo[position]
            checks[i] = check
            cache.store(files[i], *stat, check)
            if on_progress:
                on_progress(1)
    finally:
        cache.save()  # also on Ctrl-C: what was checked stays checked
    return ValidationResult(checks, validated=len(todo), cached=len(files) - len(todo))  # type: ignore[arg-type]


def filter_bad_files(dataset: Any, workers: int | None = None,
                     max_image_mb: float = DEFAULT_MAX_IMAGE_MB) -> tuple[Any, list[tuple[str, str]]]:
    """Drop unusable images from a folder or file-list `DatasetSpec`: (clean spec, [(path, reason)]).

    The trainer's `data.on_bad_file = "skip"`: DALI cannot skip a sample, so bad files are removed
    before the pipeline is built. Uses the validation cache in the dataset root, so after one run
    (or after `relic-fast index`) this only stats files. A format whose images are not files
    (WebDataset shards) comes back unchanged. Files
    over `max_image_mb` MB are dropped unread, as `index` drops them.
    """
    if not dataset.format.image_files or not dataset.files:
        return dataset, []
    result = validate_files(dataset.root, dataset.files, workers=workers, max_image_mb=max_image_mb)
    keep = [i for i, check in enumerate(result.checks) if check.reason is None]
    if len(keep) == len(dataset.files):
        return dataset, []
    clean = dataclasses.replace(dataset, files=[dataset.files[i] for i in keep],
                                labels=[dataset.labels[i] for i in keep], num_samples=len(keep))
    return clean, result.rejected(dataset.files)
