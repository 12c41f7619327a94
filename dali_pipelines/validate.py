"""Image validation before DALI sees a file: name the bad ones, drop them, and remember the answer.

A corrupt file kills a DALI pipeline for good, with an error that does not name the file, and DALI
cannot skip a sample. So files are checked here with PIL first (`Image.open` + `verify()`, then a
fresh open + `load()`: `verify` alone misses truncation). Every format and mode kept here is one
DALI's decoder turns into 3-channel RGB (JPEG incl. CMYK, grayscale, progressive and EXIF-rotated;
PNG of any mode, also under a `.jpg` name since DALI sniffs the content; BMP, TIFF, WebP); GIF and
unknown content are rejected. A file larger than the byte cap (`DEFAULT_MAX_IMAGE_MB`, `index
--max-image-mb`) is rejected from its size alone and never read: a huge (or sparse) file named
`x.jpg` would otherwise be read whole into memory. A reason is a short `category: detail` string; its
category (the text before the colon) is what summaries group by.

`validate_files` checks many files in a process pool with a JSON cache keyed by (path, size,
mtime_ns), so a re-run over an unchanged tree only stats files. `filter_bad_files` is the trainer's
`data.on_bad_file = "skip"` path. Data side: imports no `relic_fast`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import re
import struct
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

from PIL import Image, ImageOps, UnidentifiedImageError

from dali_pipelines.atomic import write_text_atomically
from dali_pipelines.recipe import DataConfig

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest accepted image (width * height): bigger ones cost seconds and gigabytes per decode."""

DEFAULT_MAX_IMAGE_MB = DataConfig.max_image_mb
"""Largest accepted image file, in MB of 2**20 bytes: a bigger one is rejected from its size, unread (each
check reads the whole file into memory). Far above what a photo of `DEFAULT_MAX_PIXELS` compresses to."""

CACHE_NAME = ".relic-fast-index-cache.json"
"""File name of the validation cache, kept in the dataset's root folder."""

CACHE_VERSION = 1

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "BMP", "TIFF", "WEBP"})
"""PIL format names whose files DALI's `fn.decoders.image` decodes (checked on its CPU decoder)."""

_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr"})
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # the EXIF orientations that swap width and height


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8) DALI's decoder turns `image` by: the one orientation rule of the validator
    and `relic-fast masks`, so a mask is written at the size and turn the image is decoded to. 1 (as stored)
    when the tag is absent, and also when the EXIF block cannot be read: a broken EXIF block does not make the
    pixels unusable, so the image is kept and read as stored."""
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001  (any error parsing a broken EXIF block)
        return 1


def decoded_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of `image` as displayed, i.e. as DALI decodes it: orientations 5-8 swap the sides."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _TRANSPOSING_ORIENTATIONS else (width, height)


def upright(image: Image.Image) -> Image.Image:
    """`image` turned by its `exif_orientation`, as DALI decodes it (`image` itself when there is nothing to turn)."""
    return ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image


class ImageCheck(NamedTuple):
    """The outcome of checking one file: `reason` is None when usable; the rest is what was read."""

    reason: str | None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""


def reason_category(reason: str) -> str:
    """The category of a rejection reason (`"truncated: ..."` -> `"truncated"`), for summaries."""
    return reason.split(":", 1)[0]


def _unrecognized(head: bytes) -> str:
    """Reason for content PIL cannot identify: a zero-size PNG header, text, or unknown bytes."""
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return f"zero size: PNG header says {width}x{height}"
    try:
        text = head.decode("utf-8")
        if "\x00" not in text:
            return "not an image: text content"
    except UnicodeDecodeError:
        pass
    return "not an image: unrecognized content"


def _open_checked(data: bytes, max_pixels: int, min_side: int) -> ImageCheck:
    """Identify, bound-check, verify, then fully decode `data` (JPEG at 1/8 scale: same entropy pass)."""
    with warnings.catch_warnings():
        # Our own pixel cap decides; PIL's decompression-bomb warning would only add noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            found = _BOMB_PIXELS.search(str(err))
            pixels = found.group(1) if found else "too many"
            return ImageCheck(f"too large: {pixels} pixels > cap {max_pixels}")
        except UnidentifiedImageError:
            return ImageCheck(_unrecognized(data[:512]))
        width, height = image.size
        info = ImageCheck(None, width, height, image.mode, image.format or "")
        if info.format not in SUPPORTED_FORMATS:
            return info._replace(reason=f"unsupported format: {info.format or 'unknown'}")
        if info.format == "TIFF" and info.mode not in _EIGHT_BIT_MODES:
            return info._replace(reason=f"unsupported format: TIFF mode {info.mode}")
        if width <= 0 or height <= 0:
            return info._replace(reason=f"zero size: {width}x{height}")
        if width * height > max_pixels:
            return info._replace(reason=f"too large: {width}x{height} > cap {max_pixels} pixels")
        if min(width, height) < min_side:
            return info._replace(reason=f"too small: {width}x{height} < {min_side} pixels a side")
        image.verify()
        image = Image.open(io.BytesIO(data))
        shown_width, shown_height = decoded_size(image)  # the shape DALI will decode to
        info = info._replace(width=shown_width, height=shown_height)
        if image.format == "JPEG":
            # Decodes every Huffman block at 1/8 scale: truncation and corruption still surface.
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
        return info


def _megabytes(size: int) -> str:
    """`size` bytes in MB (2**20 bytes), rounded up to a tenth so a file just over a cap never reads as
    equal to it: 300 MB, 3.1 MB."""
    tenths = -(-size * 10 // 2**20)
    return str(tenths // 10) if tenths % 10 == 0 else f"{tenths / 10:.1f}"


def oversize_reason(size: int, max_image_mb: float) -> str | None:
    """The rejection reason of a file of `size` bytes over the cap of `max_image_mb` MB, else None."""
    if size <= max_image_mb * 2**20:
        return None
    return f"too large: file of {_megabytes(size)} MB exceeds the {max_image_mb:g} MB cap"


def _read_capped(path: str | os.PathLike, max_image_mb: float) -> bytes | ImageCheck:
    """The bytes of `path`, or the check rejecting it: missing, unreadable, or over the byte cap (judged
    from its size before reading, and never reading more than the cap, in case it grows meanwhile)."""
    limit = int(max_image_mb * 2**20)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if (reason := oversize_reason(size, max_image_mb)) is not None:
                return ImageCheck(reason)
            data = handle.read(limit + 1)
    except FileNotFoundError:
        return ImageCheck("missing: no such file")
    except OSError as err:
        return ImageCheck(f"unreadable: {err.strerror or err}")
    if len(data) > limit:
        return ImageCheck(oversize_reason(max(size, len(data)), max_image_mb))
    return data


def check_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                min_side: int = 1, max_image_mb: float = DEFAULT_MAX_IMAGE_MB) -> ImageCheck:
    """Check one file and say why it is unusable (or None) along with its size, mode and format.

    Never raises for a bad file: every failure becomes a reason, so a pool of workers can run it
    over millions of files. A file over `max_image_mb` MB is rejected without being read.
    """
    data = _read_capped(path, max_image_mb)
    if isinstance(data, ImageCheck):
        return data
    if not data:
        return ImageCheck("empty: 0 bytes")
    try:
        return _open_checked(data, max_pixels, min_side)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as err:
        message = str(err) or type(err).__name__
        category = "truncated" if "truncat" in message.lower() else "corrupt"
        return ImageCheck(f"{category}: {message[:120]}")
    except Exception as err:  # noqa: BLE001  (a PIL plugin may raise anything on hostile bytes)
        return ImageCheck(f"corrupt: {type(err).__name__}: {str(err)[:120]}")


def validate_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                   min_side: int = 1, max_image_mb: float = DEFAULT_MAX_IMAGE_MB) -> str | None:
    """A short reason why `path` is not an image DALI can decode to RGB, or None when it is usable.

    Reasons look like `"truncated: image file is truncated"`, `"not an image: text content"`,
    `"too large: 50000x50000 > cap 100000000 pixels"`, `"too large: file of 300 MB exceeds the 64 MB
    cap"`. The loader calls this on a DALI error to name the bad file.
    """
    return check_image(path, max_pixels=max_pixels, min_side=min_side, max_image_mb=max_image_mb).reason


def image_info(path: str | os.PathLike) -> tuple[int, int, str, str]:
    """(width, height, PIL mode, PIL format) read from the file's header (no full decode).

    Width and height are as displayed (EXIF orientation applied), the shape DALI decodes to.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            return *decoded_size(image), image.mode, image.format or ""


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
    (or after `relic-fast index`) this only stats files. WebDataset specs come back unchanged. Files
    over `max_image_mb` MB are dropped unread, as `index` drops them.
    """
    if dataset.kind == "webdataset" or not dataset.files:
        return dataset, []
    result = validate_files(dataset.root, dataset.files, workers=workers, max_image_mb=max_image_mb)
    keep = [i for i, check in enumerate(result.checks) if check.reason is None]
    if len(keep) == len(dataset.files):
        return dataset, []
    clean = dataclasses.replace(dataset, files=[dataset.files[i] for i in keep],
                                labels=[dataset.labels[i] for i in keep], num_samples=len(keep))
    return clean, result.rejected(dataset.files)
