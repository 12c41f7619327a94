"""Photo-like test images and the views a CPU pipeline cuts from them, for tests that compare two variants of
the graph (its augmentation units) on the same draws."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from dali_pipelines.augmentations.unit import Augmentation
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.pretrain import multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig


def smooth_photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like image: low-frequency colour waves (what a 2x2 box leaves nearly as it is) plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [128 + 90 * np.sin(2 * math.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform()))
                for _ in range(3)]
    return np.clip(np.stack(channels, -1) + rng.normal(0, 3, (height, width, 3)), 0, 255).astype(np.uint8)


def write_photos(folder: Path, height: int, width: int, count: int = 4) -> Path:
    """`count` PNG photos (`smooth_photo`, seeds 0..count-1) in two class folders under `folder`."""
    for i in range(count):
        class_folder = folder / f"class{i % 2}"
        class_folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_photo(height, width, i)).save(class_folder / f"{i}.png")
    return folder


def cpu_views(folder: Path, views: ViewsConfig, units: Sequence[Augmentation], seed: int) -> list[np.ndarray]:
    """Every view (int arrays, (B, H, W, 3)) of one CPU batch of the 4 photos under `folder`: the same draws for
    any `units` at one `seed`."""
    dataset = resolve_dataset(str(folder))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    pipe = multi_view_pipeline(plan, views, "cpu", False, units, batch_size=4, num_threads=1, device_id=None,
                               seed=seed)
    pipe.build()
    outputs = pipe.run()
    return [np.stack([np.asarray(t) for t in outputs[k]]).astype(int) for k in range(views.num_views)]
