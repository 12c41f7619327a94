"""dali_pipelines.validate and image_check: per-file reasons, sizes as DALI decodes them, the cache, the filter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.image_check import ImageCheck, check_image, image_info, reason_category, validate_image
from dali_pipelines.validate import ValidationCache, filter_bad_files, validate_files

from tests.support.image_zoo import HEIGHT, WIDTH, encode, noise_image, write_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """The image zoo written once for the read-only tests."""
    root = tmp_path_factory.mktemp("zoo")
    return root, write_zoo(root)


def test_every_zoo_file_gets_its_expected_verdict(zoo):
    root, expected = zoo
    for name, category in expected.items():
        reason = validate_image(root / name)
        if category is None:
            assert reason is None, f"{name} is usable but was rejected: {reason}"
        else:
            assert reason is not None and reason_category(reason) == category, f"{name}: {reason}"


def test_missing_file_and_pixel_cap(zoo, tmp_path):
    root, _ = zoo
    assert reason_category(validate_image(tmp_path / "nope.jpg")) == "missing"
    # The cap is configurable: a 48x40 image is over a 1000-pixel cap, and under a larger one.
    assert reason_category(validate_image(root / "cat/rgb.jpg", max_pixels=1000)) == "too large"
    assert validate_image(root / "cat/rgb.jpg", max_pixels=WIDTH * HEIGHT) is None
    assert reason_category(validate_image(root / "cat/one_pixel.jpg", min_side=2)) == "too small"


def test_image_info_reports_the_decoded_orientation(zoo):
    root, _ = zoo
    assert image_info(root / "cat/rgb.jpg") == (WIDTH, HEIGHT, "RGB", "JPEG")
    assert image_info(root / "cat/cmyk.jpg")[2:] == ("CMYK", "JPEG")
    assert image_info(root / "cat/png_named.jpg")[3] == "PNG"
    # EXIF orientation 6 (90 degree turn): DALI decodes it HEIGHT wide and WIDTH high.
    assert image_info(root / "cat/exif_rotated.jpg")[:2] == (HEIGHT, WIDTH)
    check = check_image(root / "cat/exif_rotated.jpg")
    assert (check.width, check.height) == (HEIGHT, WIDTH)


def test_cache_counts_validations_and_notices_changes(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(encode(noise_image(i), "JPEG"))
    files = [f"{i}.jpg" for i in range(5)]
    first = validate_files(tmp_path, files, workers=1)
    assert (first.validated, first.cached) == (5, 0)
    again = validate_files(tmp_path, files, workers=1)
    assert (again.validated, again.cached) == (0, 5)
    assert again.checks == first.checks
    # Truncating a file changes its size: only that file is checked again, and now rejected.
    data = (tmp_path / "2.jpg").read_bytes()
    (tmp_path / "2.jpg").write_bytes(data[: len(data) // 2])
    changed = validate_files(tmp_path, files, workers=1)
    assert changed.validated == 1
    assert changed.rejected(files) == [("2.jpg", changed.checks[2].reason)]
    # Same bytes, new mtime: checked again.
    stat = (tmp_path / "0.jpg").stat()
    os.utime(tmp_path / "0.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert validate_files(tmp_path, files, workers=1).validated == 1
    # Other settings (pixel cap) make the cached verdicts void.
    assert validate_files(tmp_path, files, workers=1, max_pixels=10**6).validated == 5


def test_corrupt_cache_is_only_a_slower_run(tmp_path):
    (tmp_path / "a.jpg").write_bytes(encode(noise_image(), "JPEG"))
    cache = tmp_path / "cache.json"
    cache.write_text("{not json")
    result = validate_files(tmp_path, ["a.jpg"], workers=1, cache_path=cache)
    assert result.validated == 1 and result.checks[0].reason is None
    stored = ValidationCache(cache, {"max_pixels": 100_000_000, "min_side": 1})
    stat = (tmp_path / "a.jpg").stat()
    assert stored.lookup("a.jpg", stat.st_size, stat.st_mtime_ns) == result.checks[0]


def test_process_pool_agrees_with_serial(zoo, tmp_path):
    root, expected = zoo
    files = sorted(expected) * 5  # > 64 files: the pool path runs
    pooled = validate_files(root, files, workers=2, cache_path=None)
    serial = validate_files(root, files, workers=1, cache_path=None)
    assert pooled.validated == len(files)
    assert pooled.checks == serial.checks


def _spec(root: Path, files: list[str]):
    """The readers' DatasetSpec of a file list of `files` (alternating labels)."""
    listing = root / "list.txt"
    listing.write_text("".join(f"{f} {i % 2}\n" for i, f in enumerate(files)))
    return resolve_dataset(str(listing))


def test_filter_bad_files_drops_and_names_them(zoo):
    root, expected = zoo
    files = sorted(expected)
    spec = _spec(root, files)
    clean, rejected = filter_bad_files(spec, workers=1)
    assert [name for name, _ in rejected] == [f for f in files if expected[f] is not None]
    assert all(reason_category(reason) == expected[name] for name, reason in rejected)
    assert clean.files == [f for f in files if expected[f] is None]
    assert clean.num_samples == len(clean.files)
    assert clean.labels == [spec.labels[spec.files.index(f)] for f in clean.files]
    # A clean spec comes back as it is.
    assert filter_bad_files(clean, workers=1) == (clean, [])


def test_check_never_raises_on_hostile_bytes(tmp_path):
    rng_bytes = [b"\xff\xd8\xff" + bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
                 b"BM" + b"\xff" * 60, b"RIFF\0\0\0\0WEBPVP8 " + b"\x01" * 30]
    for i, data in enumerate(rng_bytes):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(data)
        check = check_image(path)
        assert isinstance(check, ImageCheck) and check.reason is not None
    Image.new("RGB", (3, 3)).save(tmp_path / "ok.png")
    assert check_image(tmp_path / "ok.png").reason is None
