"""Procedural labelled demo dataset: ten shapes on ten background textures, with a spurious background cue.

RELICv2 claims its invariance loss and saliency masking make representations lean on the object rather than
on the background. This dataset makes that measurable on a laptop. Each image shows one foreground object of
one of `CLASS_NAMES` (random colour or texture, size, position, rotation) on a background from one of
`BACKGROUND_FAMILIES` (random colours, frequencies, angles). Class `c` "owns" family `c` (circle->stripes,
crescent->checkerboard, cross->clouds, ellipse->dots, heart->gradient, hexagon->waves, ring->grid,
square->speckle, star->zigzag, triangle->sunburst; see `OWN_BACKGROUND`). Labels index the sorted class names.

Layout under OUT (the folder tree `dali_pipelines.dataset.resolve_dataset` reads):
  OUT/train/<class>/<index>.jpg            N images (`--images`), JPEG quality 90, 4:4:4 chroma
  OUT/val/<class>/<index>.jpg              max(N // 4, 10) images, backgrounds independent of the class
  OUT/val_correlated/<class>/<index>.jpg   max(N // 4, 10) images, backgrounds correlated like train
  OUT/test/<class>/<index>.jpg             max(N // 4, 10) images, backgrounds independent of the class
  OUT/masks/<split>/<class>/<index>.png    saliency mask: 0/255 grayscale, 255 = foreground, image size
  OUT/backgrounds.tsv                      split, image (relative path), class, background: one row per image
  OUT/dataset.json                         parameters and counts (callers check a cached copy against it)

Exact background rule. Every split is class-balanced: class c gets n // 10 images plus one more when
c < n % 10. In `train` and `val_correlated`, exactly round(correlation * n_c) (half rounds up) of class c's
n_c images use its own family; the other images are spread evenly over the other nine families (in a seeded
order, so counts differ by at most one). With the default correlation 0.7, 70 % of a class's images show its
own family, and a background alone predicts the class 70 % of the time (chance is 10 %). In `val` and `test`,
each class's images are spread evenly over all ten families (counts differ by at most one), so the background
carries no information about the class. Settings are chosen on `val`; results are reported on the held-out
`test`. The gap in accuracy between `val_correlated` and `val` measures how
much a representation relies on the spurious background.

Determinism: the plan (label and family per image) comes from an RNG seeded by (seed, split); every image from
an RNG seeded by (seed, split, index), so no two splits share an image. The same seed gives identical bytes
whatever the number of worker processes, and a different seed gives different images.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image

from dali_pipelines.atomic import replace_folder
from relic_fast.demo_render import BACKGROUND_FAMILIES, CLASS_NAMES, render

OWN_BACKGROUND = dict(zip(CLASS_NAMES, BACKGROUND_FAMILIES))
"""The background family each class shows most often in the correlated splits."""

SPLITS = ("train", "val", "val_correlated", "test")
"""The splits, in the order their RNG streams are numbered (a new split goes last: the others keep their bytes)."""

CORRELATED_SPLITS = ("train", "val_correlated")
BACKGROUND_CORRELATION = 0.7
"""Default fraction of a class's images (train, val_correlated) drawn on the class's own background family."""

FORMAT = "relic-fast-demo-data"
VERSION = 4
"""Bumped whenever rendering or the splits change, so cached datasets of an older version are regenerated."""

JPEG_QUALITY = 90

_PLAN, _IMAGE = 0, 1  # RNG stream tags: keys must have equal length (numpy pads seed lists with zeros)


def val_images(images: int) -> int:
    """Images in each evaluation split (val, val_correlated, test) for `images` training images:
    max(images // 4, number of classes)."""
    return max(images // 4, len(CLASS_NAMES))


def class_counts(total: int) -> np.ndarray:
    """Balanced per-class counts: n // K each, the remainder going one each to the first classes."""
    k = len(CLASS_NAMES)
    return np.array([total // k + (1 if c < total % k else 0) for c in range(k)], dtype=np.int64)


def plan_split(split: str, total: int, *, seed: int, correlation: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and background family indices of a split's images, in index order (see the module docstring)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), _PLAN, 0])
    families = len(BACKGROUND_FAMILIES)
    labels, backgrounds = [], []
    for c, n_c in enumerate(class_counts(total)):
        own = c % families
        if split in CORRELATED_SPLITS:
            n_own = math.floor(correlation * n_c + 0.5)
            others = rng.permutation([f for f in range(families) if f != own])
            chosen = np.concatenate([np.full(n_own, own), np.resize(others, n_c - n_own)])
        else:
            chosen = np.resize(rng.permutation(families), n_c)
        labels.append(np.full(n_c, c))
        backgrounds.append(rng.permutation(chosen))
    return np.concatenate(labels).astype(np.int64), np.concatenate(backgrounds).astype(np.int64)


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The image's own RNG: a function of (seed, split, index) only, so workers reproduce the serial bytes."""
    return np.random.default_rng([seed, SPLITS.index(split), _IMAGE, index])


def render_sample(seed: int, split: str, index: int, label: int, background: int,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of `split`: (size, size, 3) uint8 RGB and its (size, size) uint8 saliency mask in {0, 255}."""
    return render(_sample_rng(seed, split, index), label, background, size)


# ---- writing -------------------------------------------------------------------------------------------------

def relative_image_path(split: str, label: int, index: int) -> str:
    """Where an image lives under the dataset root, e.g. 'train/circle/000012.jpg'."""
    return f"{split}/{CLASS_NAMES[label]}/{index:06d}.jpg"


def _render_chunk(root: str, seed: int, size: int, items: list[tuple[str, int, int, int]]) -> int:
    """Worker: render and write the images and masks of `items` (split, index, label, background)."""
    for split, index, label, background in items:
        image, mask = render_sample(seed, split, index, label, background, size)
        relative = relative_image_path(split, label, index)
        # 4:4:4 chroma: the default 4:2:0 smears the fine two-colour textures (3x the error at 40 px)
        Image.fromarray(image).save(os.path.join(root, relative), format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        Image.fromarray(mask).save(os.path.join(root, "masks", relative[:-4] + ".png"), format="PNG")
    return len(items)


def _run_jobs(root: Path, seed: int, size: int, items: list, workers: int, progress: bool) -> None:
    """Render every item, in chunks over a process pool (or in this process for workers == 1), with a bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    chunk = max(8, min(128, -(-len(items) // (workers * 6))))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("rendering demo data", total=len(items))
        if workers == 1 or len(chunks) == 1:
            for part in chunks:
                bar.advance(task, _render_chunk(str(root), seed, size, part))
            return
        # spawn, not fork: callers (the trainer) may hold torch/OpenMP threads that a fork would copy half-locked
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_render_chunk, str(root), seed, size, part) for part in chunks]
            for future in as_completed(futures):
                bar.advance(task, future.result())


def _write_dataset(root: Path, *, images: int, size: int, seed: int, correlation: float, workers: int,
                   progress: bool) -> dict:
    """Write the whole dataset into `root` (which must not exist yet) and return its summary."""
    summary = {"format": FORMAT, "version": VERSION, "images": images, "size": size, "seed": seed,
               "correlation": correlation, "classes": list(CLASS_NAMES), "backgrounds": list(BACKGROUND_FAMILIES),
               "own_background": OWN_BACKGROUND, "image_suffix": ".jpg", "jpeg_quality": JPEG_QUALITY,
               "chroma_subsampling": "4:4:4", "mask_root": "masks", "backgrounds_file": "backgrounds.tsv",
               "splits": {}}
    items, rows = [], ["split\timage\tclass\tbackground"]
    for split in SPLITS:
        total = images if split == "train" else val_images(images)
        labels, backgrounds = plan_split(split, total, seed=seed, correlation=correlation)
        for name in CLASS_NAMES:
            (root / split / name).mkdir(parents=True)
            (root / "masks" / split / name).mkdir(parents=True)
        for index, (label, background) in enumerate(zip(labels.tolist(), backgrounds.tolist())):
            items.append((split, index, label, background))
            rows.append(f"{split}\t{relative_image_path(split, label, index)}\t{CLASS_NAMES[label]}\t"
                        f"{BACKGROUND_FAMILIES[background]}")
        own = np.mean(backgrounds == labels % len(BACKGROUND_FAMILIES))
        summary["splits"][split] = {
            "images": total, "per_class": dict(zip(CLASS_NAMES, class_counts(total).tolist())),
            "background_rule": "correlated" if split in CORRELATED_SPLITS else "uniform",
            "own_background_fraction": round(float(own), 6)}
    _run_jobs(root, seed, size, items, workers, progress)
    (root / "backgrounds.tsv").write_text("\n".join(rows) + "\n")
    (root / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")  # last: marks the dataset complete
    return summary


def _check_parameters(images: int, size: int, seed: int, correlation: float) -> None:
    """Reject parameters the generator cannot honour, naming the bad one."""
    if images < len(CLASS_NAMES):
        raise ValueError(f"images must be >= {len(CLASS_NAMES)} (one per class), got {images}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {correlation}")


def _publish(partial: Path, out: Path, *, replace: bool) -> None:
    """Rename the finished `partial` folder to `out` (atomic); replace an existing `out` only when asked
    (`replace_folder`). Without `replace` a folder another process published meanwhile is never replaced:
    the rename itself refuses a non-empty `out`, which is how concurrent `ensure_demo_dataset` calls agree."""
    if replace:
        replace_folder(partial, out)
        return
    try:
        os.rename(partial, out)  # also succeeds when `out` is an empty directory
    except OSError:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite to replace it") from None


def _default_workers(images: int) -> int:
    """All CPU cores, except for tiny datasets that render faster than worker processes start."""
    return (os.cpu_count() or 1) if images >= 200 else 1


def generate_demo_dataset(out: Path, *, images: int, size: int, seed: int,
                          correlation: float = BACKGROUND_CORRELATION, workers: int | None = None,
                          progress: bool = True, overwrite: bool = False) -> dict:
    """Write the demo dataset to `out` and return its summary (the contents of `out/dataset.json`).

    The files are written into a hidden sibling folder, which is renamed to `out` once complete, so a crash
    never leaves a half dataset at `out`. `workers` defaults to `os.cpu_count()` (1 under 200 training images);
    the bytes do not depend on it. An existing non-empty `out` raises FileExistsError unless `overwrite`.
    """
    _check_parameters(images, size, seed, correlation)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        summary = _write_dataset(partial, images=images, size=size, seed=seed, correlation=float(correlation),
                                 workers=_default_workers(images) if workers is None else max(1, workers),
                                 progress=progress)
        _publish(partial, out, replace=overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return summary


def read_summary(root: Path) -> dict | None:
    """The demo dataset summary at `root/dataset.json`, or None when there is none (or it is unreadable)."""
    try:
        summary = json.loads((Path(root) / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("format") == FORMAT else None


def demo_cache_dir() -> Path:
    """Where generated demo datasets are cached: `$RELIC_FAST_CACHE`, else `~/.cache/relic-fast`."""
    return Path(os.environ.get("RELIC_FAST_CACHE") or Path.home() / ".cache" / "relic-fast")


def default_demo_root(images: int = 2000, size: int = 96, seed: int = 0,
                      correlation: float = BACKGROUND_CORRELATION) -> Path:
    """The cache folder of the demo dataset with these parameters, e.g. `<cache>/demo-data/n2000-px96-seed0-c0.7`."""
    return demo_cache_dir() / "demo-data" / f"n{images}-px{size}-seed{seed}-c{correlation:g}"


def ensure_demo_dataset(images: int = 2000, size: int = 96, seed: int = 0, root: Path | None = None, *,
                        correlation: float = BACKGROUND_CORRELATION, workers: int | None = None,
                        progress: bool = True) -> Path:
    """Return the root of a demo dataset with these parameters, generating it on first use.

    `root` defaults to `default_demo_root(...)`. A dataset already there is reused when its dataset.json
    matches (format, version, images, size, seed, correlation) and replaced when it does not; a non-empty
    folder without a demo dataset.json is never touched (FileExistsError). Concurrent callers are safe: each
    renders into its own temporary folder and whoever publishes first wins.
    """
    root = Path(root) if root is not None else default_demo_root(images, size, seed, correlation)
    wanted = {"format": FORMAT, "version": VERSION, "images": images, "size": size, "seed": seed,
              "correlation": float(correlation)}

    def matches() -> bool:
        summary = read_summary(root)
        return summary is not None and all(summary.get(key) == value for key, value in wanted.items())

    if matches():
        return root
    stale = read_summary(root) is not None
    if root.exists() and any(root.iterdir()) and not stale:
        raise FileExistsError(f"{root} is not empty and holds no demo dataset.json; refusing to overwrite it")
    try:
        generate_demo_dataset(root, images=images, size=size, seed=seed, correlation=correlation,
                              workers=workers, progress=progress, overwrite=stale)
    except FileExistsError:
        if not matches():  # another process published first; fine only if it is what we asked for
            raise
    return root
