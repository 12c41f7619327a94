"""A benchmark corpus of real-sized JPEGs cut from the real photographs shipped with scikit-image.

Loader speed depends on what is decoded: synthetic flat-colour images compress to a few KB and
decode far faster than photographs. This module cuts random crops (ImageNet-like aspect ratios,
300-640 px wide, rescaled, sometimes flipped) from scikit-image's sample photographs and saves
them as quality-90 JPEGs in a folder tree `out/<class>/<image>.jpg` (class = source photograph),
a layout every reader (DALI, torchvision, a file list) can read. Same `count` and `seed`, same
files. Usage: `python -m relic_fast.bench.corpus OUT --count 400`.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
           "immunohistochemistry", "colorwheel")
"""scikit-image sample photographs (RGB, bundled with the wheel, no download): one class each."""

ASPECT_RATIOS = (4 / 3, 3 / 2, 1.0, 3 / 4, 2 / 3, 16 / 9)
"""Width / height of the images, the common ImageNet shapes (landscape 4:3 and 3:2 dominate)."""

ASPECT_WEIGHTS = (0.4, 0.2, 0.1, 0.15, 0.1, 0.05)
"""How often each aspect ratio is drawn."""

WIDTH_RANGE = (300, 640)
"""Range of image widths in pixels (inclusive)."""

JPEG_QUALITY = 90


def load_sources() -> dict[str, np.ndarray]:
    """The source photographs as HxWx3 uint8 arrays, by name; a clear error without scikit-image."""
    try:
        import skimage.data
    except ImportError as err:
        raise ImportError("the benchmark corpus is cut from scikit-image's sample photographs: "
                          "install the dev extra (pip install -e '.[dev]' or pip install scikit-image)") from err
    return {name: np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in SOURCES}


def cut_image(photo: np.ndarray, rng: np.random.Generator):
    """One corpus image: a random crop of `photo` with a drawn aspect ratio, rescaled and maybe flipped."""
    from PIL import Image

    aspect = rng.choice(ASPECT_RATIOS, p=ASPECT_WEIGHTS)
    width = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    height = max(1, round(width / aspect))
    rows, cols = photo.shape[:2]
    # the largest crop of this aspect ratio that fits, then a random fraction of its area
    crop_w = min(cols, rows * aspect)
    scale = np.sqrt(rng.uniform(0.35, 1.0))
    crop_w = max(16, int(crop_w * scale))
    crop_h = max(16, min(rows, int(crop_w / aspect)))
    top = int(rng.integers(0, rows - crop_h + 1))
    left = int(rng.integers(0, cols - crop_w + 1))
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def write_images(out: Path, indices: Sequence[int], seed: int) -> None:
    """Write the corpus images with these indices (one process's share of `make_photo_corpus`)."""
    sources = load_sources()
    names = list(sources)
    for index in indices:
        name = names[index % len(names)]
        rng = np.random.default_rng([seed, index])
        image = cut_image(sources[name], rng)
        image.save(out / name / f"{name}_{index:05d}.jpg", format="JPEG", quality=JPEG_QUALITY)


def make_photo_corpus(out: Path, count: int = 400, seed: int = 0, workers: int | None = None) -> Path:
    """Write `count` JPEGs to `out/<source photo>/<source photo>_<index>.jpg`; return `out`.

    Deterministic: image i is drawn from its own generator seeded by (seed, i), so the same
    arguments write byte-identical files whatever `workers` (processes; default: all CPU cores).
    Classes take turns, so every class gets count/8 images.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = Path(out)
    for name in SOURCES[:count]:
        (out / name).mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, count // 64 or 1))
    if workers == 1:
        write_images(out, range(count), seed)
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(write_images, [out] * workers, [range(i, count, workers) for i in range(workers)],
                      [seed] * workers))  # list(): a worker's exception is raised here
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m relic_fast.bench.corpus OUT [--count N] [--seed S]`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the class folders into")
    parser.add_argument("--count", type=int, default=400, help="number of images (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, help="processes (default: all CPU cores; same files either way)")
    args = parser.parse_args(argv)
    out = make_photo_corpus(args.out, count=args.count, seed=args.seed, workers=args.workers)
    files = sorted(out.rglob("*.jpg"))
    size_kb = sum(f.stat().st_size for f in files) / max(len(files), 1) / 1024
    print(f"wrote {args.count} JPEGs to {out} ({len(files)} in the tree, mean {size_kb:.1f} KB)")


if __name__ == "__main__":
    main()
