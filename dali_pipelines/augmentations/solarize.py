"""Solarization with probability `solarize_p` per view setting (view k uses entry k mod len): x -> 255 - x
on the bright half (threshold 0.5 on [0, 1] pixels), one lookup table on uint8 pixels; on the CPU a step of the
compiled view pass where that pass runs anyway (`Solarize.fused_step`)."""

from __future__ import annotations

from typing import Sequence

from nvidia.dali import fn, types

from dali_pipelines.augmentations.unit import Augmentation, FusedStep, ImageInputs, StatsColumns, StatsGroup, View
from dali_pipelines.draws import Coin, Uniforms, coin_can_vary, constant
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

    def probabilities(self, views: ViewsConfig) -> tuple[float, ...]:
        """Each view's solarization probability."""
        return tuple(view_entry(views.solarize_p, k) for k in range(views.num_views))

    def columns(self, views: ViewsConfig) -> tuple:
        """A coin per view, where some view's can vary."""
        p = self.probabilities(views)
        return (Coin("solarize", p),) if any(coin_can_vary(q) for q in p) else ()

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: Uniforms | None, earlier) -> object:
        """(V, 1) bool coins, or None where no view's can vary."""
        return uniforms.coin("solarize") if self.columns(views) else None

    def per_view(self, draws, views: ViewsConfig) -> list:
        """Each view's decision: a scalar bool, or a Python bool where its probability is 0 or 1."""
        return [draws[k, 0] if coin_can_vary(p) else p >= 1.0 for k, p in enumerate(self.probabilities(views))]

    def apply(self, x, view: View):
        """The lookup table where drawn (always at probability 1, no operator at 0). A conditional on the GPU
        too: a per-sample lookup table would need a blend of two uint8 images."""
        decision = view.draws[self.name]
        if decision is True:
            return solarize(x)
        if decision is not False:
            if decision:
                x = solarize(x)
        return x

    def fused_step(self, draws, views: Sequence[View]) -> FusedStep:
        """On the CPU, the solarization of every view that may take it, as a step of the view pass where the pass
        runs for other steps (alone, its conditional lookup table costs less than a pass over a large view)."""
        config = views[0].views
        taken = [p > 0.0 for p in self.probabilities(config)]
        return FusedStep("solarize", self.stats(draws, config)[0], 1, frozenset(k for k, t in enumerate(taken) if t),
                         frozenset(k for k, t in enumerate(taken) if not t), leads=False)

    def stats(self, draws, views: ViewsConfig) -> tuple:
        """The decisions (a view's probability where no view's can vary)."""
        if draws is None:
            return (constant([[float(p >= 1.0)] for p in self.probabilities(views)]),)
        return (draws * 1.0,)
