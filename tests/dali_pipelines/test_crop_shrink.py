"""The crop's shrink of large photos on the CPU (`augmentations.crop`): an exact 2x2 box, only where every
window keeps the view's side in pixels, and views that stay what they were."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nvidia.dali import pipeline_def, types

from dali_pipelines.augmentations import AUGMENTATIONS
from dali_pipelines.augmentations import cpu_kernels
from dali_pipelines.augmentations.cpu_kernels import halved
from dali_pipelines.augmentations.crop import Crop, shrink_area
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.pretrain import graph_operators, multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig

from tests.support.photos import cpu_views, write_photos


class Unshrunk(Crop):
    """The crop without its shrink: every view cut from the photo as decoded."""

    def prepare(self, image, inputs, views):
        return image


UNSHRUNK = tuple(Unshrunk() if isinstance(unit, Crop) else unit for unit in AUGMENTATIONS)

VIEWS = ViewsConfig(num_large=2, num_small=2, large_size=24, small_size=12, saliency_p=0.0)
"""Small views (the shrink's case): shrink_area = 24^2 / (0.08 * 0.75) = 9,600 pixels."""


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two folders of PNG photos: 240 px (6x shrink_area: halved) and 160 px (2.7x: as decoded)."""
    root = tmp_path_factory.mktemp("shrink")
    for side in (240, 160):
        write_photos(root / str(side), side, side)
    return root


def kinds_of(pipe) -> list[str]:
    """The kinds of the operators of a constructed pipeline."""
    return [kind for kind, _ in graph_operators(pipe)]


def views_of(folder, units) -> list[np.ndarray]:
    """Every view of one CPU batch of the 4 photos under `folder`, seed 3 (the same draws for any units)."""
    return cpu_views(folder, VIEWS, units, seed=3)


@pytest.mark.parametrize("numba", [True, False], ids=["kernel", "dali operators"])
def test_halved_is_the_mean_of_each_2x2_block(monkeypatch, numba):
    """Odd sides drop the last row and column; each pixel the rounded mean of its block, all rows (DALI's strided
    subscript, tried for it, got the first few right only); the compiled kernel, and without numba DALI's own
    operators."""
    monkeypatch.setattr(cpu_kernels, "available", lambda: numba)
    image = np.random.default_rng(0).integers(0, 256, (67, 91, 3)).astype(np.uint8)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        return halved(types.Constant(image, layout="HWC"), types.Constant(np.asarray(image.shape, np.int64)))

    built = pipe()
    built.build()
    got = np.asarray(built.run()[0][0]).astype(float)
    blocks = image[:66, :90].astype(float).reshape(33, 2, 45, 2, 3).mean(axis=(1, 3))
    assert got.shape == (33, 45, 3)
    assert np.abs(got - blocks).max() <= 0.5
    assert kinds_of(built).count("NumbaFunction") == numba


def test_the_smallest_window_keeps_the_view_side():
    """At shrink_area pixels the shortest side of the smallest window (least area, most extreme aspect) is the
    view's side, for each kind of view; the larger need decides."""
    views = ViewsConfig()
    assert shrink_area(views) == pytest.approx(max(224 ** 2 / (0.08 * 0.75), 96 ** 2 / (0.05 * 0.75)))
    pixels = shrink_area(views)
    for size, area in ((224, 0.08), (96, 0.05)):
        for ratio in views.aspect_ratio:
            shorter = min(math.sqrt(area * pixels * ratio), math.sqrt(area * pixels / ratio))
            assert shorter >= size - 1e-6
    assert shrink_area(views.replace(num_small=0, large_size=64)) == pytest.approx(64 ** 2 / (0.08 * 0.75))


def test_large_photos_are_halved_and_their_views_stay_close(photos):
    """A 240 px photo (6x the pixels its smallest window needs) is halved first: the same windows, each still a
    downscale, so every view is within a few levels of the view cut from the full photo."""
    shrunk, full = views_of(photos / "240", AUGMENTATIONS), views_of(photos / "240", UNSHRUNK)
    differences = [np.abs(a - b).mean() for a, b in zip(shrunk, full)]
    assert max(differences) < 3.0, differences
    assert any(not np.array_equal(a, b) for a, b in zip(shrunk, full))     # the shrink did act


def test_photos_below_four_times_the_need_are_cut_as_decoded(photos):
    """A 160 px photo (2.7x the need) is not halved: its views are bit-identical to the unshrunk crop's."""
    for shrunk, full in zip(views_of(photos / "160", AUGMENTATIONS), views_of(photos / "160", UNSHRUNK)):
        assert np.array_equal(shrunk, full)


def test_only_the_cpu_graph_holds_the_shrink(photos):
    """The GPU's pixel work is not its pipeline's limit: its graph has no shrink (no kernel, no conditional)."""
    dataset = resolve_dataset(str(photos / "240"))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    bare = VIEWS.replace(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,), solarize_p=(0.0,))
    for device, shrinks in (("cpu", 1), ("gpu", 0)):
        pipe = multi_view_pipeline(plan, bare, device, False, batch_size=2, num_threads=1,
                                   device_id=0 if device == "gpu" else None)
        kinds = [kind for kind, _ in graph_operators(pipe)]
        assert kinds.count("NumbaFunction") == shrinks and kinds.count("Merge") == shrinks, (device, kinds)
        assert "Filter" not in kinds, (device, kinds)
