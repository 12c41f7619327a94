"""The CPU's compiled view pass (`augmentations.cpu_kernels.view_pass`, `fused_pass`): each step's formula to the
rounding, one or two views per operator, the same views as DALI's own operators, and where it sits in the graphs
(the kernel's halving of large photos: test_crop_shrink.py)."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def

from dali_pipelines.augmentations import AUGMENTATIONS, cpu_kernels
from dali_pipelines.augmentations.colour import Colour
from dali_pipelines.augmentations.cpu_kernels import PLAN_COLUMNS, STEPS, VIEWS_PER_OPERATOR, view_pass
from dali_pipelines.augmentations.solarize import Solarize
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.pretrain import graph_operators, multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig

from tests.support.photos import cpu_views, write_photos

WIDTHS = {"blend": 4, "colour": 21, "blur": 8, "solarize": 1}
"""Columns of each step's parameters in the tests' rows (the blur's: h and up to 7 weights)."""


def levels(values: np.ndarray) -> np.ndarray:
    """Float levels as a uint8 step leaves them: rounded half up, clamped to 0..255."""
    return np.clip(np.floor(values + 0.5), 0, 255)


def reference(image: np.ndarray, weights: np.ndarray, row: dict, steps: set) -> np.ndarray:
    """The pass in float64, step by step: blend fill + (x - fill) a / 255; the fused map y = M x + A mean(x) + T;
    the blur's two 1-D passes with a reflect-101 border (numpy's "reflect"); solarize 255 - x from 128 up."""
    x = image.astype(np.float64)
    if "blend" in steps and row["blend"][0] > 0.5:
        fill = row["blend"][1:4]
        x = levels(fill + (x - fill) * weights.astype(np.float64) / 255.0)
    if "colour" in steps:
        packed = row["colour"].reshape(3, 7).astype(np.float64)
        y = x @ packed[:, :3].T + (packed[:, 3:6] @ x.reshape(-1, 3).mean(axis=0) + packed[:, 6])
        x = levels(y)
    half = int(row["blur"][0]) if "blur" in steps else 0
    if half:
        taps = row["blur"][1:2 + 2 * half].astype(np.float64)
        for axis in (1, 0):
            pad = [(0, 0)] * 3
            pad[axis] = (half, half)
            size = x.shape[axis]
            padded = np.pad(x, pad, mode="reflect") if size > 1 else np.repeat(x, 2 * half + 1, axis=axis)
            x = levels(sum(taps[t] * np.take(padded, np.arange(t, t + size), axis=axis) for t in range(2 * half + 1)))
    if "solarize" in steps and row["solarize"][0] > 0.5:
        x = np.where(x >= 128, 255 - x, x)
    return x


def random_row(rng, views: int) -> dict:
    """(views, n) parameters of every step: blends drawn at 1/2, maps past 0 and 255, blurs of 0 to 3 half-widths."""
    halves = rng.integers(0, 4, views)
    taps = np.zeros((views, 7))
    for k, half in enumerate(halves):
        weights = np.exp(-0.5 * ((np.arange(2 * half + 1) - half) / rng.uniform(0.3, 2.0)) ** 2)
        taps[k, :2 * half + 1] = weights / weights.sum()
    maps = np.concatenate([rng.uniform(-0.4, 1.3, (views, 3, 6)), rng.uniform(-60, 60, (views, 3, 1))], axis=2)
    return {"blend": np.column_stack([rng.random(views) < 0.5, rng.uniform(0, 255, (views, 3))]),
            "colour": maps.reshape(views, 21), "blur": np.column_stack([halves, taps]),
            "solarize": (rng.random((views, 1)) < 0.5).astype(float)}


def plan_rows(views: list[int], steps: set) -> np.ndarray:
    """Each view's plan row: its row, then per step on / first column (the tests' columns: `WIDTHS` in order)."""
    firsts = dict(zip(STEPS, np.cumsum([0] + [WIDTHS[kind] for kind in STEPS])))
    rows = [[k] + [value for kind in STEPS for value in (float(kind in steps), firsts[kind])] for k in views]
    assert len(rows[0]) == PLAN_COLUMNS
    return np.asarray(rows, np.float32)


def run_pass(images, weights, params, plans) -> list[list[np.ndarray]]:
    """The pass on `images[view][sample]` with `weights[view][sample]`, `params[sample]` and the plan:
    outputs[view][sample]."""
    @pipeline_def(batch_size=len(params), num_threads=1, device_id=None)
    def pipe():
        views = [fn.external_source(source=[batch], cycle=True, layout="HWC") for batch in images]
        alphas = [fn.external_source(source=[batch], cycle=True, layout="HWC") for batch in weights]
        parameters = fn.external_source(source=[params], cycle=True)
        return tuple(view_pass(views, alphas, parameters, plans))

    built = pipe()
    built.build()
    return [[np.asarray(sample) for sample in output] for output in built.run()]


STEP_SETS = [{"colour"}, {"blend"}, {"blur"}, {"solarize"}, set(STEPS), {"blend", "blur", "solarize"}]


@pytest.mark.parametrize("steps", STEP_SETS, ids=["+".join(sorted(steps)) for steps in STEP_SETS])
@pytest.mark.parametrize("views", [1, VIEWS_PER_OPERATOR])
def test_the_pass_is_each_step_formula(steps, views):
    """Random images of odd shapes (a single pixel, a single row too) and random parameters: every output within
    one level of the float64 steps, off by one only where float32 meets a rounding half."""
    rng = np.random.default_rng(len(steps) * 10 + views)
    shapes = [(37, 23, 3), (1, 1, 3), (1, 9, 3), (40, 52, 3)]
    images = [[rng.integers(0, 256, shape).astype(np.uint8) for shape in shapes] for _ in range(views)]
    weights = [[rng.integers(0, 256, shape[:2] + (1,)).astype(np.uint8) for shape in shapes] for _ in range(views)]
    rows = [random_row(rng, views) for _ in shapes]
    params = [np.concatenate([row[kind] for kind in STEPS], axis=1).astype(np.float32) for row in rows]
    got = run_pass(images, weights, params, plan_rows(list(range(views)), steps))
    changed = 0
    for view in range(views):
        for sample, shape in enumerate(shapes):
            row = {kind: rows[sample][kind][view] for kind in STEPS}
            expected = reference(images[view][sample], weights[view][sample][..., 0:1], row, steps)
            out = got[view][sample]
            assert out.dtype == np.uint8 and out.shape == shape
            difference = np.abs(out.astype(float) - expected)
            assert difference.max() <= 1 and (difference > 0).mean() < 2e-3, (view, sample)
            changed += int((out != images[view][sample]).any())
    assert changed > 0                                    # the steps did something


def test_one_operator_takes_one_or_two_views_each_with_its_weights_and_plan():
    with pytest.raises(ValueError, match="1 to 2 views"):
        view_pass([], [], None, np.zeros((0, PLAN_COLUMNS)))
    with pytest.raises(ValueError, match="1 to 2 views"):
        view_pass([None] * 3, [None] * 3, None, np.zeros((3, PLAN_COLUMNS)))
    with pytest.raises(ValueError, match="2 views, 1 weights"):
        view_pass([None] * 2, [None], None, np.zeros((2, PLAN_COLUMNS)))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four photo-like PNGs, 180 x 200 px, two classes."""
    return write_photos(tmp_path_factory.mktemp("colour"), 180, 200)


def views_of(photos, views: ViewsConfig, units=AUGMENTATIONS) -> list[np.ndarray]:
    """Every view of one CPU batch of the 4 photos, seed 5 (the same draws whichever way the graph is made)."""
    return cpu_views(photos, views, units, seed=5)


def test_the_pass_gives_the_views_of_dalis_operators(photos, monkeypatch):
    """Seven views (four operators) at 32 and 16 px with every step but the blend (no masks): jitter and grayscale
    on every view, the blur (one view in two at p = 1), solarize at 0.5: the pass's views are those of DALI's own
    operators (`coord_transform`, two `filter` passes, the lookup table in its conditional), to a level where float32
    sums meet a rounding half, except where such a level moves a pixel across the solarization's threshold."""
    views = ViewsConfig(num_large=4, num_small=3, large_size=32, small_size=16, jitter_p=1.0, grayscale_p=0.3,
                        blur_p=(1.0, 0.5), solarize_p=(0.5,), saliency_p=0.0)
    fused = views_of(photos, views)
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    by_operators = views_of(photos, views)
    for a, b in zip(fused, by_operators):
        difference = np.abs(a - b)
        assert (difference <= 1).mean() > 0.995 and (difference > 0).mean() < 0.02
    assert not np.array_equal(fused[0], views_of(photos, views.replace(jitter_p=0.0, grayscale_p=0.0))[0])


def cpu_kinds(photos, views: ViewsConfig, device: str = "cpu", units=AUGMENTATIONS) -> list[str]:
    """The operator kinds of the graph of `views` over the photos (the GPU's constructed for device 0, never built)."""
    dataset = resolve_dataset(str(photos))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    pipe = multi_view_pipeline(plan, views, device, False, units, batch_size=2, num_threads=1,
                               device_id=0 if device == "gpu" else None)
    return [kind for kind, _ in graph_operators(pipe)]


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_only_the_cpu_graph_makes_the_views_in_the_pass(photos, device):
    """Small views (32 / 16 px): on the CPU one pass operator per two views (and the crop's halving), no
    `coord_transform`, mean, filter or lookup table left, no conditional but the halving's; the GPU (constructed for
    device 0, never built) keeps DALI's operators."""
    views = ViewsConfig(num_large=4, num_small=3, large_size=32, small_size=16, saliency_p=0.0)
    kinds = cpu_kinds(photos, views, device)
    if device == "cpu":
        assert kinds.count("NumbaFunction") == 4 + 1
        assert not {"CoordTransform", "Mean", "Filter", "LookupTable"} & set(kinds)
        assert kinds.count("Merge") == 1                  # the only conditional left: the crop's halving
    else:
        assert "NumbaFunction" not in kinds and kinds.count("CoordTransform") == 2 * views.num_views


def test_the_pass_stops_where_a_unit_keeps_its_operators(photos):
    """Large views (224 px): the blur of a varying probability stays in its conditional (two filter passes where
    drawn), so the pass colours the views before it; the solarization after it is not worth a pass alone and keeps
    its lookup table."""
    views = ViewsConfig(num_large=2, num_small=0, large_size=224, blur_p=(0.5,), solarize_p=(0.2,), saliency_p=0.0)
    kinds = cpu_kinds(photos, views)
    assert kinds.count("NumbaFunction") == 1 + 1                       # one pass of two views, the halving
    assert kinds.count("Filter") == 2 * 2 and kinds.count("LookupTable") == 2
    assert "CoordTransform" not in kinds


def test_steps_handed_out_of_the_pass_order_fail_with_the_order(photos):
    """A unit list whose path hands solarize before colour (an order the pass cannot run) is refused by name."""
    units = tuple(unit for unit in AUGMENTATIONS if not isinstance(unit, Solarize))
    colour_at = next(i for i, unit in enumerate(units) if isinstance(unit, Colour))
    reordered = units[:colour_at] + (Solarize(),) + units[colour_at:]
    views = ViewsConfig(num_large=1, num_small=0, large_size=16, solarize_p=(0.5,), saliency_p=0.0)
    with pytest.raises(ValueError, match="runs its steps in the order"):
        cpu_kinds(photos, views, units=reordered)


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
