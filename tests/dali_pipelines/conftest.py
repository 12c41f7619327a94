"""Fixtures for the pipeline tests: tiny image sets written once per session in every reader format."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.pipeline_data import Layouts, has_mask, identity_image, identity_mask, pattern_image, write_layouts


@pytest.fixture(scope="session")
def identity_data(tmp_path_factory) -> Layouts:
    """24 one-colour PNG squares with left-column masks (every 4th without a mask), in 3 formats."""
    count = 24
    return write_layouts(tmp_path_factory.mktemp("identity"), [identity_image(i) for i in range(count)],
                         [identity_mask(i) if has_mask(i) else None for i in range(count)])


@pytest.fixture(scope="session")
def pattern_data(tmp_path_factory) -> Layouts:
    """32 copies of the pattern image (PNG), no masks."""
    return write_layouts(tmp_path_factory.mktemp("pattern"), [pattern_image()] * 32, [None] * 32, shards=1)


@pytest.fixture(scope="session")
def indexed_data(tmp_path_factory) -> Layouts:
    """26 small JPEGs whose label is their index (sharding tests identify samples by label)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (24, 40, 3), dtype=np.uint8) for _ in range(26)]
    return write_layouts(tmp_path_factory.mktemp("indexed"), images, [None] * 26, suffix=".jpg", shards=3,
                         label_of=lambda i: i)


@pytest.fixture(scope="session")
def wide_data(tmp_path_factory) -> Layouts:
    """16 JPEGs 48 wide x 32 high (crop-window statistics on a non-square image)."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(16)]
    return write_layouts(tmp_path_factory.mktemp("wide"), images, [None] * 16, suffix=".jpg", shards=1)


@pytest.fixture(scope="session")
def gray_data(tmp_path_factory) -> Layouts:
    """16 uniform mid-gray (128) PNG squares: hue, saturation and contrast leave them unchanged."""
    image = np.full((32, 32, 3), 128, np.uint8)
    return write_layouts(tmp_path_factory.mktemp("gray"), [image] * 16, [None] * 16, shards=1)
