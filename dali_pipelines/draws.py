"""Every random number of one image's views, drawn by ONE operator per image, and the debug statistics.

Each augmentation unit declares the numbers it needs per view as columns (`Augmentation.columns`): a
`Coin` (drawn with a per-view probability) or a `Uniform` (a value in a per-view range). `draw_uniforms`
draws all of them for all V views as one (V, K) uniform matrix; a shared comparison turns the coin columns
into booleans and one affine map scales the value columns, and each unit reads its columns back as (V, 1)
or (V, n) blocks (`Uniforms`). Operators cost the pipeline per sample whatever their size (docs/performance.md,
the host-cost section), so the units compute on these blocks, a handful of operators per image, and each
view's argument is sliced once from the result (`Augmentation.per_view`).

Two kinds of `if` shape the graph: a Python `if` on the config (`ViewsConfig`, `ViewSpec`) decides which
operators exist (a column exists only where its probability lies strictly between 0 and 1); `if flag:` on
a view's boolean coin is a DALI per-sample conditional, used where the branch skips real pixel work.

The debug statistics (`stats`) are the units' own columns (`Augmentation.stats_columns`), grouped: the crop
window first, then every unit's 0/1 decisions, then its drawn parameters, each group in the units' order
(`stats_fields`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
from nvidia.dali import fn, types

from dali_pipelines.recipe import ViewsConfig

if TYPE_CHECKING:  # the units import these helpers: a runtime import would be circular
    from dali_pipelines.augmentations.unit import Augmentation, ImageInputs

ImageDraws = dict[str, Any]
"""Every unit's draws of one image, by unit name: `{unit.name: what unit.draw returned}`."""

ViewDraws = dict[str, Any]
"""One view's record, by unit name: `{unit.name: that view's entry of unit.per_view}`."""


class Coin(NamedTuple):
    """A per-view coin: view k's is set with probability `probabilities[k]` (per sample)."""

    name: str
    probabilities: tuple[float, ...]


class Uniform(NamedTuple):
    """A per-view value, uniform in [low[k], high[k]) for view k."""

    name: str
    low: tuple[float, ...]
    high: tuple[float, ...]


Column = Coin | Uniform


def constant(array) -> object:
    """A float32 constant of the graph (a vector or matrix the operators broadcast against)."""
    return types.Constant(np.asarray(array, dtype=np.float32))


def coin_can_vary(probability: float) -> bool:
    """A coin of this probability is not always the same: it needs a draw (and a conditional to use it)."""
    return 0.0 < probability < 1.0


@dataclass(frozen=True)
class Uniforms:
    """One image's columns: `coins` (V, K) bool, `values` (V, K) float, `index` the column of each name."""

    index: dict[str, int]
    coins: Any
    values: Any

    def coin(self, name: str, count: int = 1):
        """(V, count) bool: the coin `name` of every view (and the `count` - 1 coins declared after it)."""
        j = self.index[name]
        return self.coins[:, j:j + count]

    def value(self, name: str):
        """(V, 1) float: the value `name` of every view."""
        j = self.index[name]
        return self.values[:, j:j + 1]

    def block(self, first: str, count: int):
        """(V, count) float: `count` consecutive value columns starting at `first` (a unit's own, in the
        order it declared them)."""
        j = self.index[first]
        return self.values[:, j:j + count]


def draw_uniforms(columns: Sequence[Column], views: int) -> Uniforms | None:
    """All `columns` of one image from one uniform (V, K) draw: coins = u < p, values = low + u (high - low).
    None when no column is declared (no operator at all)."""
    if not columns:
        return None
    names = [column.name for column in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"two units declare the same draw column: {names}")
    uniform = fn.random.uniform(range=[0.0, 1.0], shape=[views, len(columns)])
    coins = values = None
    if any(isinstance(column, Coin) for column in columns):
        probability = np.full((views, len(columns)), 2.0)   # > 1: set everywhere (a value column, never read)
        for j, column in enumerate(columns):
            if isinstance(column, Coin):
                probability[:, j] = column.probabilities
        coins = uniform < constant(probability)
    values_used = [column for column in columns if isinstance(column, Uniform)]
    if values_used:
        low = np.zeros((views, len(columns)))
        span = np.ones((views, len(columns)))
        for j, column in enumerate(columns):
            if isinstance(column, Uniform):
                low[:, j] = column.low
                span[:, j] = np.subtract(column.high, column.low)
        values = uniform if not low.any() and (span == 1).all() else constant(low) + uniform * constant(span)
    return Uniforms({name: j for j, name in enumerate(names)}, coins, values)


def draw_views(image: "ImageInputs", views: ViewsConfig, units: Sequence["Augmentation"]) -> ImageDraws:
    """Every random choice of one image's views: one uniform draw for all units' columns, then each unit's
    draws from its columns, in the units' order (a unit may read the draws of the units before it, as the
    crop reads the flip)."""
    columns = [column for unit in units for column in unit.columns(views)]
    uniforms = draw_uniforms(columns, views.num_views)
    draws: ImageDraws = {}
    for unit in units:
        draws[unit.name] = unit.draw(image, views, uniforms, draws)
    return draws


def each_view_draws(draws: ImageDraws, views: ViewsConfig, units: Sequence["Augmentation"]) -> list[ViewDraws]:
    """Each view's own record of the image's draws. Made before any view's operators, outside every
    per-sample conditional, so that a branch receives the view's draws instead of slicing them itself."""
    per_unit = {unit.name: unit.per_view(draws[unit.name], views) for unit in units}
    return [{name: records[k] for name, records in per_unit.items()} for k in range(views.num_views)]


def as_float(flag, views: int):
    """A (V, 1) float 0/1 column for the debug statistics: a coin, or a Python bool / None (no draw)."""
    if flag is None or isinstance(flag, bool):
        return constant(np.full((views, 1), float(bool(flag))))
    return flag * 1.0


def stats_layout(units: Sequence["Augmentation"]) -> list[tuple["Augmentation", int]]:
    """(unit, index into its `stats_columns`) of every debug column block, in row order: by group, then
    in the units' order (a stable sort)."""
    blocks = [(unit, index) for unit in units for index in range(len(unit.stats_columns))]
    return sorted(blocks, key=lambda block: block[0].stats_columns[block[1]].group)


def stats_fields(units: Sequence["Augmentation"]) -> tuple[str, ...]:
    """Names of the debug `stats` columns, in order (`ViewBatch.stats`)."""
    return tuple(name for unit, index in stats_layout(units) for name in unit.stats_columns[index].names)


def stats(draws: ImageDraws, views: ViewsConfig, units: Sequence["Augmentation"]):
    """(V, len(stats_fields)) float debug rows of one image: the units' (V, n) blocks in `stats_layout` order."""
    blocks = {unit.name: unit.stats(draws[unit.name], views) for unit in units}
    return fn.cat(*[blocks[unit.name][index] for unit, index in stats_layout(units)], axis=1)
