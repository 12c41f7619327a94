"""The augmentation units: every `[views]` key has one owner, the graph's path and debug columns come from
the units, the profiler's ablations switch one unit off each, and a unit handed to the graph runs in it."""

from __future__ import annotations

import dataclasses

import numpy as np
from nvidia.dali import fn, types

from dali_pipelines.augmentations import (AUGMENTATIONS, ablation_advice, ablations, view_path,
                                          without_augmentations)
from dali_pipelines.augmentations.unit import Augmentation, StatsColumns, StatsGroup
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.draws import Coin, stats_fields
from dali_pipelines.pretrain import STATS_FIELDS, multi_view_pipeline
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import ViewsConfig

from tests.support.pipeline_data import SIDE, pattern_image

LAYOUT = {"num_large", "num_small", "mean", "std"}
"""The `[views]` keys no augmentation owns: how many views, and the normalization."""


def test_every_views_key_belongs_to_the_layout_or_one_unit():
    owners = [key for unit in AUGMENTATIONS for key in unit.settings]
    assert len(owners) == len(set(owners)), "a key claimed by two units"
    assert set(owners) | LAYOUT == {f.name for f in dataclasses.fields(ViewsConfig)}
    assert not set(owners) & LAYOUT
    for unit in AUGMENTATIONS:
        assert set(unit.off) <= set(unit.settings), unit.name


def test_names_and_debug_columns_are_unique_and_grouped():
    """Window, then decisions, then parameters: the columns the pipeline tests and the golden outputs read."""
    assert len({unit.name for unit in AUGMENTATIONS}) == len(AUGMENTATIONS)
    assert len(set(STATS_FIELDS)) == len(STATS_FIELDS)
    group = {name: columns.group for unit in AUGMENTATIONS for columns in unit.stats_columns for name in columns.names}
    assert [group[name] for name in STATS_FIELDS] == sorted(group[name] for name in STATS_FIELDS)
    assert STATS_FIELDS[:4] == ("y0", "x0", "y1", "x1")
    today = ("flip", "jitter", "gray", "blur", "solarize", "saliency", "sigma")  # their order: the golden outputs'
    assert tuple(name for name in STATS_FIELDS if name in today) == today


def test_a_view_is_cut_then_blended_then_recoloured():
    path = view_path()
    assert [unit.stage for unit in path] == sorted(unit.stage for unit in path)
    today = ["flip", "crop", "saliency", "colour", "blur", "solarize"]
    assert [unit.name for unit in path if unit.name in today] == today


def test_ablations_switch_one_unit_off_each():
    """One group per unit that has one and is on (the profiler's groups of today among them), each the recipe
    with that unit off; the bare recipe keeps only the crop."""
    views = ViewsConfig()
    groups = dict(ablations(views))
    assert list(groups) == [unit.ablation_group for unit in AUGMENTATIONS if unit.ablation_group and unit.is_on(views)]
    assert {"colour jitter + grayscale", "gaussian blur", "solarize", "saliency masking"} <= set(groups)
    for unit in AUGMENTATIONS:
        if unit.ablation_group in groups:
            ablated = groups[unit.ablation_group]
            assert not unit.is_on(ablated) and ablated == views.replace(**unit.off)
            assert ablation_advice(unit.ablation_group) == unit.ablation_advice
    light = dict(ablations(ViewsConfig(solarize_p=(0.0,), saliency_p=0.0)))
    assert "solarize" not in light and "saliency masking" not in light and "gaussian blur" in light
    bare = without_augmentations(views)
    assert [unit.name for unit in AUGMENTATIONS if unit.is_on(bare)] == ["crop"]
    assert (bare.num_large, bare.large_size, bare.large_area) == (views.num_large, views.large_size, views.large_area)


class Darken(Augmentation):
    """A toy unit for the graph's contract: view k halved (x // 2) with probability `probabilities[k]`."""

    name = "darken"
    stats_columns = (StatsColumns(("darken",), StatsGroup.DECISION),)

    def __init__(self, probabilities: list[float]):
        self.probabilities = probabilities

    def columns(self, views):
        return (Coin("darken", tuple(self.probabilities)),)

    def draw(self, image, views, uniforms, earlier):
        return uniforms.coin("darken")

    def per_view(self, draws, views):
        return [draws[k, 0] for k in range(views.num_views)]

    def apply(self, x, view):
        if view.draws[self.name]:
            x = fn.lookup_table(x, keys=list(range(256)), values=[float(v // 2) for v in range(256)], dtype=types.UINT8)
        return x

    def stats(self, draws, views):
        return (draws * 1.0,)


def test_a_unit_handed_to_the_graph_draws_applies_and_reports(pattern_data):
    """The toy unit's column joins the decisions (before the parameters); its views are darkened exactly
    where it drew, the others are the image itself."""
    units = AUGMENTATIONS + (Darken([1.0, 0.5, 0.0]),)
    fields = stats_fields(units)
    parameters = tuple(name for unit in AUGMENTATIONS for columns in unit.stats_columns
                       if columns.group == StatsGroup.PARAMETER for name in columns.names)
    assert fields == STATS_FIELDS[:len(STATS_FIELDS) - len(parameters)] + ("darken",) + parameters
    views = ViewsConfig(num_large=3, num_small=0, large_size=SIDE, large_area=(1.0, 1.0), aspect_ratio=(1.0, 1.0),
                        flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,), solarize_p=(0.0,), saliency_p=0.0)
    dataset = resolve_dataset(str(pattern_data.folder))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    pipe = multi_view_pipeline(plan, views, "cpu", True, units, batch_size=32, num_threads=2, device_id=None, seed=1)
    pipe.build()
    outputs = pipe.run()
    large = [np.stack([np.asarray(t) for t in outputs[k]]) for k in range(3)]
    stats = np.stack([np.asarray(t) for t in outputs[4]])
    assert stats.shape == (32, 3, len(fields))
    darkened = stats[..., fields.index("darken")]
    assert (darkened[:, 0] == 1).all() and (darkened[:, 2] == 0).all() and 0 < darkened[:, 1].sum() < 32
    for k in range(3):
        for sample in range(32):
            expected = pattern_image() // 2 if darkened[sample, k] else pattern_image()
            assert (large[k][sample] == expected).all()
