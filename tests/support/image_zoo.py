"""A small tree of valid-but-unusual and broken image files, for the validation and index tests.

`write_zoo(root)` writes `root/<class>/<file>` and returns {relative path: expected rejection
category or None}. Valid files are ones DALI's decoder turns into RGB (CMYK, grayscale, progressive,
EXIF-rotated, PNG under a .jpg name, 1x1, 16-bit PNG, ...); broken ones cover what real datasets
hold (empty, truncated, random bytes, text, GIF under a .jpg name, absurd or zero-size headers).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 48, 40


def noise_image(seed: int = 0, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """A random RGB image (smoothed, so JPEGs stay small and decodable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Bytes of `image` saved in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is tiny (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def zoo_files() -> dict[str, tuple[bytes, str | None]]:
    """{relative path: (file bytes, expected rejection category or None when DALI can use it)}."""
    image = noise_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: DALI decodes to HEIGHT x WIDTH swapped
    jpeg = encode(image, "JPEG", quality=90)
    png = encode(image, "PNG")
    return {
        "cat/rgb.jpg": (jpeg, None),
        "cat/cmyk.jpg": (encode(image.convert("CMYK"), "JPEG"), None),
        "cat/gray.jpg": (encode(image.convert("L"), "JPEG"), None),
        "cat/progressive.jpg": (encode(image, "JPEG", progressive=True), None),
        "cat/exif_rotated.jpg": (encode(image, "JPEG", exif=exif.tobytes()), None),
        "cat/png_named.jpg": (png, None),
        "cat/one_pixel.jpg": (encode(noise_image(1, 4, 4).resize((1, 1)), "JPEG"), None),
        "dog/palette.png": (encode(image.convert("P"), "PNG"), None),
        "dog/rgba.png": (encode(image.convert("RGBA"), "PNG"), None),
        "dog/gray16.png": (encode(Image.fromarray(
            np.asarray(image.convert("L"), dtype=np.uint16) * 257), "PNG"), None),
        "dog/bitmap.bmp": (encode(image, "BMP"), None),
        "dog/photo.webp": (encode(image, "WEBP"), None),
        "dog/empty.jpg": (b"", "empty"),
        "dog/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "dog/truncated.png": (png[: int(len(png) * 0.9)], "truncated"),
        "dog/random.jpg": (np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
                           "not an image"),
        "dog/text.jpg": (b"<html><body>404 Not Found</body></html>\n", "not an image"),
        "dog/animation.jpg": (encode(image.convert("P"), "GIF"), "unsupported format"),
        "dog/huge.png": (png_header_only(50_000, 50_000), "too large"),
        "dog/zero.png": (png_header_only(0, 10), "zero size"),
    }


def write_zoo(root: Path) -> dict[str, str | None]:
    """Write the zoo under `root` (plus a README.txt the folder scan must ignore); return expectations."""
    expected = {}
    for name, (data, category) in zoo_files().items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[name] = category
    (root / "cat" / "README.txt").write_text("not part of the dataset\n")
    return expected
