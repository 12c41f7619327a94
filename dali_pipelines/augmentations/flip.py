"""Horizontal flip: a view is mirrored with probability `flip_p`.

It has no operator of its own: the crop (`crop.py`) swaps the window's x start and end where the flip
was drawn, `fn.resize` then mirrors for free, and a saliency mask cut with the same window stays
aligned.
"""

from __future__ import annotations

from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, Stage, StatsColumns, StatsGroup
from dali_pipelines.draws import flags
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

    def draw(self, image: ImageInputs, views: ViewsConfig, earlier) -> object:
        """(V,) 0/1 flip flags."""
        return flags([views.flip_p] * views.num_views)

    def stats(self, draws) -> tuple:
        """The flip flags."""
        return (draws,)
