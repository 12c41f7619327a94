"""Horizontal flip: a view is mirrored with probability `flip_p`.

It has no operator of its own: the crop (`crop.py`) swaps the window's x start and end where the flip
was drawn, `fn.resize` then mirrors for free, and a saliency mask cut with the same window stays
aligned. Its coins come as a (y, x) pair per view, the vertical one never drawn (probability 0): the
window's (y, x) start moves by its (height, width) times the pair, one operator for every view.
"""

from __future__ import annotations

from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, Stage, StatsColumns, StatsGroup
from dali_pipelines.draws import Coin, Uniforms, as_float, coin_can_vary
from dali_pipelines.recipe import ViewsConfig


class Flip(Augmentation):
    """The flip's coin, which the crop's window reads."""

    name = "flip"
    settings = ("flip_p",)
    stage = Stage.CUT
    off = {"flip_p": 0.0}
    stats_columns = (StatsColumns(("flip",), StatsGroup.DECISION),)

    def is_on(self, views: ViewsConfig) -> bool:
        """Flipping at all."""
        return views.flip_p > 0

    def columns(self, views: ViewsConfig) -> tuple:
        """A (vertical, horizontal) pair of coins per view, unless the flip is never or always drawn."""
        if not coin_can_vary(views.flip_p):
            return ()
        return Coin("flip_y", (0.0,) * views.num_views), Coin("flip", (views.flip_p,) * views.num_views)

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: Uniforms | None, earlier) -> object:
        """(V, 2) bool (never, flip) coins; a Python bool where `flip_p` is 0 or 1 (no operator)."""
        if not coin_can_vary(views.flip_p):
            return views.flip_p >= 1.0
        return uniforms.coin("flip_y", 2)

    def stats(self, draws, views: ViewsConfig) -> tuple:
        """The flip decisions."""
        return (as_float(draws if isinstance(draws, bool) else draws[:, 1:2], views.num_views),)
