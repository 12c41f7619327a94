"""A view's path through the units on the CPU, where a run of units' work on a view is one compiled pass.

Each unit after the crop may hand one image's work as a step of the compiled view pass (`unit.FusedStep`,
`cpu_kernels.view_pass`): the saliency blend, the fused colour map, the small views' blur and the solarization.
Walking the path unit by unit, a view collects the steps its units hand over; where a unit acts on it with its own
operators instead (a large view's blur in its conditional), the view's collected steps run first, as one pass.
So at small views, where the host cost is the operators themselves, one operator per two views replaces each
view's conditionals, filter passes and lookup table; at large views the colour (and blend) pass is still one
operator. Steps that alone are not worth a pass (`FusedStep.leads`) are left to their unit's operators.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from nvidia.dali import fn, types

from dali_pipelines.augmentations.cpu_kernels import PADDING, PLAN_COLUMNS, STEPS, VIEWS_PER_OPERATOR, view_pass
from dali_pipelines.augmentations.unit import Augmentation, FusedStep, View


class FusedPath:
    """The views of one image on their way along the path (`through` each unit in path order, then `finish`)."""

    def __init__(self, pixels: list, views: Sequence[View], steps: Mapping[str, FusedStep | None]):
        self.pixels = list(pixels)
        self.views = views
        self.steps = {name: step for name, step in steps.items() if step is not None}
        self.waiting: list[list[Augmentation]] = [[] for _ in views]
        self.params = None
        self.columns: dict[str, int] = {}
        self.no_weights = None

    def through(self, unit: Augmentation) -> None:
        """The unit's work on every view: collected where its step does it, by its operators elsewhere (after the
        view's collected steps)."""
        step = self.steps.get(unit.name)
        own = []
        for k in range(len(self.views)):
            if step is not None and k in step.views:
                self.waiting[k].append(unit)
            elif step is None or k not in step.leaves:
                own.append(k)
        self.run_waiting(own)
        if own:
            done = unit.apply_views([self.pixels[k] for k in own], [self.views[k] for k in own])
            for k, pixels in zip(own, done):
                self.pixels[k] = pixels

    def finish(self) -> list:
        """Every view at the end of the path."""
        self.run_waiting(range(len(self.views)))
        return self.pixels

    def run_waiting(self, views: Sequence[int]) -> None:
        """The collected steps of `views`: in compiled passes, two views per operator, except where none of a view's
        steps leads (then by their units' operators)."""
        passed = []
        for k in views:
            units = self.waiting[k]
            if not units:
                continue
            if any(self.steps[unit.name].leads for unit in units):
                passed.append(k)
            else:
                for unit in units:
                    self.pixels[k] = unit.apply_views([self.pixels[k]], [self.views[k]])[0]
            self.waiting[k] = units if k in passed else []
        for first in range(0, len(passed), VIEWS_PER_OPERATOR):
            chunk = passed[first:first + VIEWS_PER_OPERATOR]
            plan = np.asarray([self.plan_row(k) for k in chunk], np.float32)
            done = view_pass([self.pixels[k] for k in chunk], [self.weights(k) for k in chunk], self.parameters(), plan)
            for k, pixels in zip(chunk, done):
                self.pixels[k] = pixels
                self.waiting[k] = []

    def plan_row(self, k: int) -> list[float]:
        """View k's row of an operator's plan: its row in the parameters, then per step: on, first column."""
        kinds = [self.steps[unit.name].step for unit in self.waiting[k]]
        order = [STEPS.index(kind) for kind in kinds]
        if order != sorted(order):
            raise ValueError(f"the view pass runs its steps in the order {STEPS}, the units hand them as {kinds}")
        self.parameters()
        row = [float(k)]
        for kind in STEPS:
            row += [float(kind in kinds), float(self.columns.get(kind, 0))]
        assert len(row) == PLAN_COLUMNS
        return row

    def parameters(self):
        """The image's (V, n) parameters of every step, side by side (made once)."""
        if self.params is None:
            blocks = []
            for step in self.steps.values():
                if step.views:
                    self.columns[step.step] = sum(block.width for block in blocks)
                    blocks.append(step)
            self.params = blocks[0].block if len(blocks) == 1 else fn.cat(*[b.block for b in blocks], axis=1)
        return self.params

    def weights(self, k: int):
        """View k's blend weights where its pass blends, a 1 x 1 image elsewhere."""
        for unit in self.waiting[k]:
            step = self.steps[unit.name]
            if step.step == "blend":
                return step.weights[k]
        if self.no_weights is None:
            self.no_weights = types.Constant(PADDING, layout="HWC")
        return self.no_weights
