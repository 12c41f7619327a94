"""One image file as DALI's decoder will see it: `check_image` says why a file is unusable (or None), with
the size, mode and format it read; `exif_orientation` is the one orientation rule of the checks and of
`relic-fast masks`.

A corrupt file kills a DALI pipeline for good, with an error that does not name the file, and DALI
cannot skip a sample. So files are checked here with PIL first (`Image.open` + `verify()`, then a
fresh open + `load()`: `verify` alone misses truncation). Every format and mode kept here is one
DALI's decoder turns into 3-channel RGB (JPEG incl. CMYK, grayscale, progressive and EXIF-rotated;
PNG of any mode, also under a `.jpg` name since DALI sniffs the content; BMP, TIFF, WebP); GIF and
unknown content are rejected. A file larger than the byte cap (`DEFAULT_MAX_IMAGE_MB`, `index
--max-image-mb`) is rejected from its size alone and never read: a huge (or sparse) file named
`x.jpg` would otherwise be read whole into memory. A reason is a short `category: detail` string; its
category (the text before the colon) is what summaries group by. Data side: imports no `relic_fast`.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from typing import NamedTuple

from PIL import Image, ImageOps, UnidentifiedImageError

from dali_pipelines.recipe import DataConfig

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest accepted image (width * height): bigger ones cost seconds and gigabytes per decode."""

DEFAULT_MAX_IMAGE_MB = DataConfig.max_image_mb
"""Largest accepted image file, in MB of 2**20 bytes: a bigger one is rejected from its size, unread (each
check reads the whole file into memory). Far above what a photo of `DEFAULT_MAX_PIXELS` compresses to."""

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
