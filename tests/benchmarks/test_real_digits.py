"""The real-data image folder: scikit-learn's digits written as train/val class folders with ink masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sklearn")

from benchmarks.real_digits import main, stratified_split  # noqa: E402


def test_digits_become_a_stratified_image_folder_with_ink_masks(tmp_path):
    out = tmp_path / "digits"
    summary = main([str(out), "--size", "16"])
    assert summary["splits"] == {"train": 1347, "val": 450}
    assert json.loads((out / "dataset.json").read_text()) == summary
    assert sorted(p.name for p in (out / "train").iterdir()) == [str(d) for d in range(10)]
    val_counts = [len(list((out / "val" / str(d)).iterdir())) for d in range(10)]
    assert sum(val_counts) == 450 and max(val_counts) - min(val_counts) <= 2  # about 45 per class
    image = next((out / "train" / "0").iterdir())
    pixels = np.asarray(Image.open(image))
    assert pixels.shape == (16, 16, 3) and np.array_equal(pixels[..., 0], pixels[..., 2])
    mask = np.asarray(Image.open(out / "masks" / "train" / "0" / image.name))
    assert set(np.unique(mask)) <= {0, 255} and 0 < (mask > 0).mean() < 0.8
    assert np.all(pixels[..., 0][mask > 0] > 64)  # the mask is the ink
    assert not (out / "masks" / "val").exists()
    with pytest.raises(SystemExit, match="not empty"):
        main([str(out)])


def test_split_is_seeded_and_per_class():
    labels = np.repeat(np.arange(3), 20)
    first, again, other = (stratified_split(labels, 0.25, seed) for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert [int(first[labels == c].sum()) for c in range(3)] == [5, 5, 5]
