"""A real labelled dataset as an image folder: scikit-learn's bundled handwritten digits, upscaled.

The demo data is procedural; this is the real-data check of the demo experiment. scikit-learn ships
the UCI "optical recognition of handwritten digits" test set (1,797 grey 8x8 images of 0-9, values
0-16) inside its wheel, so nothing is downloaded. Each image is scaled to 0-255, upscaled bicubically to
`size` px, replicated to RGB and saved losslessly as PNG in `out/train/<digit>/` or `out/val/<digit>/`
(a stratified, seeded split). The ink is a true saliency mask (foreground = pixels above a quarter of
full intensity after upscaling), written to `out/masks/train/<digit>/<same name>.png` (0/255) for
RELICv2's saliency masking. Usage: `python -m benchmarks.real_digits OUT [--size 32]`; then
`relic-fast experiment --config configs/digits_cpu.toml --data OUT`.
"""

from __future__ import annotations

import argparse
import json
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


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean array, True for the validation samples: `val_fraction` of each class, seeded."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        is_val[rows[:round(val_fraction * len(rows))]] = True
    return is_val


def write_digits(out: Path, *, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> dict:
    """Write the image folder (train/, val/, masks/train/, dataset.json) and return the summary."""
    from PIL import Image

    out = Path(out)
    images, labels = load_digits()
    is_val = stratified_split(labels, val_fraction, seed)
    counts = {"train": 0, "val": 0}
    for index, (image, label, val) in enumerate(zip(images, labels, is_val)):
        split = "val" if val else "train"
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
        counts[split] += 1
    summary = {"source": "sklearn.datasets.load_digits (UCI optical handwritten digits)", "size": size,
               "val_fraction": val_fraction, "seed": seed, "classes": 10, "splits": counts}
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: write the digits image folder to OUT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_digits", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to create (train/, val/, masks/train/)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (upscaled from 8)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="fraction of each class in val/")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty")
    summary = write_digits(args.out, size=args.size, val_fraction=args.val_fraction, seed=args.seed)
    print(f"wrote {summary['splits']['train']} train and {summary['splits']['val']} val images of "
          f"{args.size} px to {args.out}")
    return summary


if __name__ == "__main__":
    main()
