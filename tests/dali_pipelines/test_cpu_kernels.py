"""The CPU's compiled colour pass (`augmentations.cpu_kernels`): the fused map's formula to the rounding, any
number of views per operator, the same views as DALI's `coord_transform` pass, and where it sits in the graphs
(the kernel's halving of large photos: test_crop_shrink.py)."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def

from dali_pipelines.augmentations import AUGMENTATIONS, cpu_kernels
from dali_pipelines.augmentations.colour import Colour
from dali_pipelines.augmentations.cpu_kernels import MAP_COLUMNS, VIEWS_PER_OPERATOR, colour_views
from dali_pipelines.augmentations.unit import Augmentation
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.pretrain import graph_operators, multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig

from tests.support.photos import cpu_views, write_photos


def reference(image: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """y = clip(round(M x + A mean(x) + T)) in float64, halves rounded up: the fused map (`colour.fused_maps`)."""
    x = image.astype(np.float64)
    matrix, mean_matrix, shift = packed[:, :3], packed[:, 3:6], packed[:, 6]
    y = x @ matrix.T + (mean_matrix @ x.reshape(-1, 3).mean(axis=0) + shift)
    return np.clip(np.floor(y + 0.5), 0, 255)


def run_kernel(images: list[list[np.ndarray]], maps: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The kernel on `images[view][sample]` with `maps[sample]` ((views, 3, 7)): outputs[view][sample]."""
    @pipeline_def(batch_size=len(maps), num_threads=1, device_id=None)
    def pipe():
        views = [fn.external_source(source=[batch], cycle=True, layout="HWC") for batch in images]
        packed = fn.external_source(source=[maps], cycle=True)
        return tuple(colour_views(views, packed))

    built = pipe()
    built.build()
    outputs = built.run()
    return [[np.asarray(sample) for sample in output] for output in outputs]


@pytest.mark.parametrize("views", [1, 3, VIEWS_PER_OPERATOR])
def test_the_kernel_is_the_fused_map(views):
    """Random images of odd shapes (a single pixel too) and random maps, values pushed past 0 and 255: every
    output within one level of the float64 formula, and off by one only where float32 meets a rounding half."""
    rng = np.random.default_rng(views)
    shapes = [(37, 23, 3), (1, 1, 3), (64, 80, 3)]
    images = [[rng.integers(0, 256, shape).astype(np.uint8) for shape in shapes] for _ in range(views)]
    maps = [np.concatenate([rng.uniform(-0.4, 1.3, (views, 3, 6)), rng.uniform(-60, 60, (views, 3, 1))],
                           axis=2).astype(np.float32) for _ in shapes]
    assert maps[0].shape[2] == MAP_COLUMNS
    got = run_kernel(images, maps)
    clipped = 0
    for view in range(views):
        for sample in range(len(shapes)):
            out, expected = got[view][sample], reference(images[view][sample], maps[sample][view].astype(np.float64))
            assert out.dtype == np.uint8 and out.shape == shapes[sample]
            difference = np.abs(out.astype(float) - expected)
            assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
            clipped += int((expected == 0).sum() + (expected == 255).sum())
    assert clipped > 0                                    # the clamp was exercised


def test_one_operator_takes_one_to_five_views():
    with pytest.raises(ValueError, match="1 to 5 views"):
        colour_views([], None)
    with pytest.raises(ValueError, match="1 to 5 views"):
        colour_views([None] * (VIEWS_PER_OPERATOR + 1), None)


class PerViewColour(Colour):
    """The colour unit without the kernel: each view by `apply`, DALI's `coord_transform` (the GPU's pass)."""

    apply_views = Augmentation.apply_views


PER_VIEW = tuple(PerViewColour() if isinstance(unit, Colour) else unit for unit in AUGMENTATIONS)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four photo-like PNGs, 180 x 200 px, two classes."""
    return write_photos(tmp_path_factory.mktemp("colour"), 180, 200)


def views_of(photos, views: ViewsConfig, units) -> list[np.ndarray]:
    """Every view of one CPU batch of the 4 photos, seed 5 (the same draws for either colour unit)."""
    return cpu_views(photos, views, units, seed=5)


def test_the_kernel_gives_the_views_of_the_coord_transform_pass(photos):
    """Seven views (two operators: five and two) with jitter and grayscale on every view: the kernel's views are
    DALI's `coord_transform` views, to a level where float32 sums meet a rounding half."""
    views = ViewsConfig(num_large=4, num_small=3, large_size=64, small_size=32, jitter_p=1.0, grayscale_p=0.3,
                        blur_p=(0.0,), solarize_p=(0.0,), saliency_p=0.0)
    kernel, per_view = views_of(photos, views, AUGMENTATIONS), views_of(photos, views, PER_VIEW)
    for a, b in zip(kernel, per_view):
        difference = np.abs(a - b)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert not np.array_equal(kernel[0], views_of(photos, views.replace(jitter_p=0.0, grayscale_p=0.0), PER_VIEW)[0])


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_only_the_cpu_graph_colours_in_the_kernel(photos, device):
    """CPU: one kernel operator per five views (and the crop's halving), no `coord_transform` and no mean left; the
    GPU (constructed for device 0, never built) keeps DALI's `coord_transform`."""
    dataset = resolve_dataset(str(photos))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    views = ViewsConfig(num_large=4, num_small=3, large_size=64, small_size=32, saliency_p=0.0)
    pipe = multi_view_pipeline(plan, views, device, False, batch_size=2, num_threads=1,
                               device_id=0 if device == "gpu" else None)
    kinds = [kind for kind, _ in graph_operators(pipe)]
    if device == "cpu":
        assert kinds.count("NumbaFunction") == 2 + 1 and "CoordTransform" not in kinds and "Mean" not in kinds
    else:
        assert "NumbaFunction" not in kinds and kinds.count("CoordTransform") == 2 * views.num_views


def test_without_numba_the_cpu_graph_uses_dali_operators(photos, monkeypatch):
    """Where numba is not installed (a checkout run from PYTHONPATH) the CPU graph colours each view with DALI's
    `coord_transform` and halves large photos with its filter: no kernel in the graph, the same views within a
    level."""
    views = ViewsConfig(num_large=2, num_small=2, large_size=24, small_size=12, jitter_p=1.0, grayscale_p=0.3,
                        blur_p=(0.0,), solarize_p=(0.0,), saliency_p=0.0)
    with_kernels = views_of(photos, views, AUGMENTATIONS)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    dataset = resolve_dataset(str(photos))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    pipe = multi_view_pipeline(plan, views, "cpu", False, batch_size=2, num_threads=1, device_id=None)
    kinds = [kind for kind, _ in graph_operators(pipe)]
    assert "NumbaFunction" not in kinds and kinds.count("CoordTransform") == 2 * views.num_views
    assert kinds.count("Filter") == 1                     # the halving: 180 x 200 px photos, 24 px views
    for a, b in zip(with_kernels, views_of(photos, views, AUGMENTATIONS)):
        difference = np.abs(a - b)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.02
