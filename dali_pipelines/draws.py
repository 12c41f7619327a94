"""Every random draw of one image's views, made once per image as (V,)-vectors (V = L + S views).

Drawing all views' coins and parameters in a handful of vector ops, instead of a handful per view,
cuts the pipeline's per-batch operator count (and CPU overhead) several-fold; each view then picks
its row. Each augmentation unit (`dali_pipelines.augmentations`) makes its own slice of an image's
draws (`Augmentation.draw`), with the helpers here: a coin is `uniform(shape=[V]) < p_view`
(`flags`), a jitter strength `applied * U(-s, s)` (`symmetric`).

The graph then hands each view its own record, `ViewDraws`: every unit's part of that view's row
(its window, its flags, the colour maps and blur weights derived from them). Two kinds of `if` shape
the graph: a Python `if` on the config (`ViewsConfig`, `ViewSpec`) decides which operators exist;
`if drawn(flag):` is a DALI conditional that runs its branch for the samples that drew the flag.

The debug statistics (`ViewBatch.stats`) are the units' own columns (`Augmentation.stats_columns`),
grouped: the crop window first, then every unit's 0/1 decisions, then its drawn parameters, each
group in the units' order (`stats_fields`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from nvidia.dali import fn, types

from dali_pipelines.recipe import ViewsConfig

if TYPE_CHECKING:  # the units import these helpers: a runtime import would be circular
    from dali_pipelines.augmentations.unit import Augmentation, ImageInputs

ImageDraws = dict[str, Any]
"""Every unit's draws of one image, by unit name: `{unit.name: what unit.draw returned}`."""

ViewDraws = dict[str, Any]
"""One view's record, by unit name: `{unit.name: that view's entry of unit.per_view}`."""


def drawn(flag):
    """The condition of a per-sample DALI `if`: true for the samples whose `flag` is set."""
    return flag > 0.0


def constant(array) -> object:
    """A float32 constant of the graph (a vector or matrix the operators broadcast against)."""
    return types.Constant(np.asarray(array, dtype=np.float32))


def per_view(values) -> object:
    """A constant float (V,) vector."""
    return constant(values)


def flags(probabilities: list[float]):
    """(V,) float 0/1 flags, flag k set with probability `probabilities[k]` (per sample)."""
    draw = fn.random.uniform(range=[0.0, 1.0], shape=[len(probabilities)])
    return fn.cast(draw < per_view(probabilities), dtype=types.FLOAT)


def symmetric(strength: float, applied, views: int):
    """applied * U(-strength, strength) per view; zero (no draw) for a zero strength."""
    if strength <= 0.0:
        return 0.0 * applied
    return applied * fn.random.uniform(range=[-strength, strength], shape=[views])


def draw_views(image: "ImageInputs", views: ViewsConfig, units: Sequence["Augmentation"]) -> ImageDraws:
    """Every random choice of one image's views: each unit's draws, in the units' order (a unit may read
    the draws of the units before it, as the crop reads the flip)."""
    draws: ImageDraws = {}
    for unit in units:
        draws[unit.name] = unit.draw(image, views, draws)
    return draws


def each_view_draws(draws: ImageDraws, views: ViewsConfig, units: Sequence["Augmentation"]) -> list[ViewDraws]:
    """Each view's own record of the image's draws. Made before any view's operators, outside every
    per-sample conditional, so that a branch receives the view's draws instead of slicing them itself."""
    per_unit = {unit.name: unit.per_view(draws[unit.name], views) for unit in units}
    return [{name: records[k] for name, records in per_unit.items()} for k in range(views.num_views)]


def stats_layout(units: Sequence["Augmentation"]) -> list[tuple["Augmentation", int]]:
    """(unit, index into its `stats_columns`) of every debug column block, in row order: by group, then
    in the units' order (a stable sort)."""
    blocks = [(unit, index) for unit in units for index in range(len(unit.stats_columns))]
    return sorted(blocks, key=lambda block: block[0].stats_columns[block[1]].group)


def stats_fields(units: Sequence["Augmentation"]) -> tuple[str, ...]:
    """Names of the debug `stats` columns, in order (`ViewBatch.stats`)."""
    return tuple(name for unit, index in stats_layout(units) for name in unit.stats_columns[index].names)


def stats(draws: ImageDraws, units: Sequence["Augmentation"]):
    """(V, len(stats_fields)) float debug rows of one image: the units' columns in `stats_layout` order.
    A run of one-column blocks is stacked into one matrix before the concatenation."""
    values = {unit.name: unit.stats(draws[unit.name]) for unit in units}
    matrices, run = [], []
    for unit, index in stats_layout(units):
        node = values[unit.name][index]
        if len(unit.stats_columns[index].names) == 1:
            run.append(node)
            continue
        if run:
            matrices.append(fn.stack(*run, axis=1))
            run = []
        matrices.append(node)
    if run:
        matrices.append(fn.stack(*run, axis=1))
    return fn.cat(*matrices, axis=1)
