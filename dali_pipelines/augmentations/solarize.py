"""Solarization with probability `solarize_p` per view setting (view k uses entry k mod len): x -> 255 - x
on the bright half (threshold 0.5 on [0, 1] pixels), one lookup table on uint8 pixels."""

from __future__ import annotations

from nvidia.dali import fn, types

from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, StatsColumns, StatsGroup, View
from dali_pipelines.draws import drawn, flags
from dali_pipelines.recipe import ViewsConfig, view_entry

SOLARIZE_TABLE = [float(v if v < 128 else 255 - v) for v in range(256)]
"""x -> 255 - x where x >= 0.5 * 255 (threshold 0.5 on [0, 1] pixels)."""


def solarize(x):
    """x -> 255 - x on the bright half (`SOLARIZE_TABLE`)."""
    return fn.lookup_table(x, keys=list(range(256)), values=SOLARIZE_TABLE, dtype=types.UINT8)


class Solarize(Augmentation):
    """The solarization's coins and its lookup table."""

    name = "solarize"
    settings = ("solarize_p",)
    off = {"solarize_p": (0.0,)}
    ablation_group = "solarize"
    ablation_advice = "solarize costs most (unusual): check views.solarize_p"
    stats_columns = (StatsColumns(("solarize",), StatsGroup.DECISION),)

    def is_on(self, views: ViewsConfig) -> bool:
        """Solarizing any view."""
        return any(p > 0 for p in views.solarize_p)

    def draw(self, image: ImageInputs, views: ViewsConfig, earlier) -> object:
        """(V,) 0/1 flags, each view at its own probability."""
        return flags([view_entry(views.solarize_p, k) for k in range(views.num_views)])

    def per_view(self, draws, views: ViewsConfig) -> list:
        """Each view's flag."""
        return [draws[k] for k in range(views.num_views)]

    def apply(self, x, view: View):
        """The lookup table where drawn (no operator at probability 0)."""
        if view_entry(view.views.solarize_p, view.spec.index) > 0.0:
            if drawn(view.draws[self.name]):
                x = solarize(x)
        return x

    def stats(self, draws) -> tuple:
        """The flags."""
        return (draws,)
