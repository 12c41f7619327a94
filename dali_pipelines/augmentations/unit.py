"""What one augmentation of the view recipe is: the `Augmentation` unit that the multi-view graph loops over.

A unit owns its augmentation end to end, so that adding one is its own file plus a line in
`AUGMENTATIONS`:
- `settings`: the `[views]` keys it reads (declared, documented and checked in `recipe.ViewsConfig`, the
  typed config section);
- `columns`: the random numbers it needs per view (coins and uniform values: `draws.Column`), drawn for
  every unit at once by one operator per image (`draws.draw_uniforms`);
- `draw`: its per-sample draws of one image from those columns, (V, n) blocks for all V views at once;
- `per_view`: each view's part of those draws, with what is derived from them once per image;
- `prepare`: its work on the decoded image, once, before any view is cut from it (the crop's shrink);
- `apply`: its DALI operators on one view (`apply_views`: on all of an image's views, where one operator serves
  several);
- `fused_step`: on the CPU, its work on a view as a step of the compiled view pass instead (`FusedStep`,
  `cpu_kernels.view_pass`): one operator then does a view's blend, colour, blur and solarization;
- `is_on`, `off`, `ablation_group`, `ablation_advice`: the profiler's ablation of it;
- `stats_columns`, `stats`: its debug columns (`ViewBatch.stats`).

Operators cost the pipeline's host per sample whatever their size, so a unit computes on the blocks (a
few operators per image), leaves out what a setting makes a no-op (probability 0 or 1, a one-tap blur: a
Python `if` on the config), and uses a per-sample conditional only where the branch skips more pixel work on
the host than its own operators cost (`branch_skips_work`).

`stage` places it on a view's path (cut, then background, then pixels); within a stage, and for the
draws and the debug columns, the order is `AUGMENTATIONS`'.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

from dali_pipelines.recipe import ViewsConfig, ViewSpec

if TYPE_CHECKING:
    from dali_pipelines.draws import Column, Uniforms


class Stage(enum.IntEnum):
    """Where on a view's path a unit's operators act: the path runs the stages in this order."""

    CUT = 0
    """Makes the view from the decoded image (the crop; the flip shapes its window)."""
    BACKGROUND = 1
    """Changes what lies behind the object, on the cut view before any colour change (saliency)."""
    PIXELS = 2
    """Changes the view's pixels (BYOL's colour jitter, grayscale, blur, solarize)."""


class StatsGroup(enum.IntEnum):
    """The part of a debug row a column sits in: rows list the groups in this order."""

    WINDOW = 0
    """Where the view was cut: the crop window (y0, x0, y1, x1)."""
    DECISION = 1
    """A per-sample 0/1 decision: the augmentation applied to this view or not."""
    PARAMETER = 2
    """A value drawn for every view (the blur's sigma), used where its decision is 1."""


class StatsColumns(NamedTuple):
    """Names of a block of debug columns and the group they sit in. The block's values (`Augmentation.stats`)
    are a (V, n) float matrix for n names."""

    names: tuple[str, ...]
    group: StatsGroup


class ImageInputs(NamedTuple):
    """What the graph hands the units when they draw for an image (DALI nodes, per sample)."""

    shape: Any
    """(H, W, C) of the encoded image, on the CPU (`fn.peek_image_shape`)."""
    mask_bytes: Any
    """The image's encoded saliency mask; None when the pipeline reads no masks."""
    has_mask: Any
    """1 where the image has a saliency mask (None with `mask_bytes`)."""
    device: str
    """Where the pixels are processed: "cpu" or "gpu"."""


class View(NamedTuple):
    """One view on its path through the units: its place in the recipe, its draws and the recipe."""

    spec: ViewSpec
    draws: Mapping[str, Any]
    """The view's `draws.ViewDraws`: each unit's record of this view, by unit name."""
    views: ViewsConfig
    device: str
    """Where the view's pixels are processed: "cpu" or "gpu"."""


class FusedStep(NamedTuple):
    """A unit's share of one image's compiled CPU view pass (`cpu_kernels.view_pass`): which views the pass does
    its work for, and its parameters for them. A view the unit `leaves` alone (no work at all) goes on to the next
    unit's step; any other view gets the unit's own operators (`apply`)."""

    step: str
    """Its step of the pass (`cpu_kernels.STEPS`)."""
    block: Any
    """(V, `width`) float: every view's parameters for the step, one row per view (`cpu_kernels.STEPS`)."""
    width: int
    views: frozenset[int]
    """The views whose work on this image the step does."""
    leaves: frozenset[int] = frozenset()
    """The views the unit does nothing to."""
    leads: bool = True
    """Whether the step alone is worth a pass over a view (False: it only joins a pass the other steps make:
    a large view's solarization alone costs the pass more than its conditional lookup table)."""
    weights: Mapping[int, Any] = {}
    """The blend step's weights image of each of its views (uint8 (H, W, 1), `cpu_kernels.view_pass`)."""


class Augmentation:
    """One augmentation of the view recipe (see the module docstring). The defaults describe a unit
    that draws nothing, has no operators and reports no column; a unit overrides what it owns."""

    name: str = ""
    """Key of the unit's draws in `ImageDraws` and `ViewDraws`."""

    settings: tuple[str, ...] = ()
    """The `ViewsConfig` keys the unit reads (each key belongs to one unit, or to the view layout)."""

    stage: Stage = Stage.PIXELS

    off: Mapping[str, Any] = {}
    """`ViewsConfig` changes that take the augmentation out of the recipe (empty: it cannot be off)."""

    ablation_group: str = ""
    """The profiler's name for the unit's operators, measured by switching them `off`; empty: not measured
    alone (still off in the profiler's bare recipe)."""

    ablation_advice: str = ""
    """What the profile report suggests when this group costs most."""

    stats_columns: tuple[StatsColumns, ...] = ()

    def is_on(self, views: ViewsConfig) -> bool:
        """Whether `views` uses the augmentation (an ablation leaves out units already off)."""
        return True

    def columns(self, views: ViewsConfig) -> tuple["Column", ...]:
        """The random numbers the unit needs per view (names unique across units); none by default."""
        return ()

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: "Uniforms | None",
             earlier: Mapping[str, Any]) -> Any:
        """The unit's per-sample draws of one image, for all views at once, from its `columns` in `uniforms`
        (`earlier`: the draws of the units before it in `AUGMENTATIONS`)."""
        return None

    def per_view(self, draws: Any, views: ViewsConfig) -> list:
        """Each view's record of the unit's `draws` (V entries, large views first)."""
        return [None] * views.num_views

    def prepare(self, image, inputs: ImageInputs, views: ViewsConfig):
        """The unit's work on the decoded `image` (uint8 HWC), once per image before any view is cut from it;
        none by default."""
        return image

    def apply(self, x, view: View):
        """The unit's operators on one view `x` (uint8 HWC; the decoded image at `Stage.CUT`)."""
        return x

    def apply_views(self, pixels: list, views: Sequence[View]) -> list:
        """The unit's operators on all of an image's views at once (`pixels[k]`: view k so far, `views[k]`: its
        record); each view by `apply` by default. A unit overrides it where one of its operators can serve several
        views (the CPU's compiled pass serves several units: `fused_step`)."""
        return [self.apply(x, view) for x, view in zip(pixels, views)]

    def fused_step(self, draws: Any, views: Sequence[View]) -> FusedStep | None:
        """The unit's step of the CPU's compiled view pass for this image (`draws`: its draws, `views`: every view's
        record); None where the pass does none of its work (the default: its operators act on every view)."""
        return None

    def stats(self, draws: Any, views: ViewsConfig) -> tuple:
        """One (V, n) float node per entry of `stats_columns`, from the unit's `draws`."""
        return ()


def branch_skips_work(device: str, size: int = 0, smallest: int = 0) -> bool:
    """Whether a per-sample conditional pays for itself on `device` for a view of side `size`. A conditional costs
    the host its own operators (the decision's slice, a split per input, a merge: ~3 µs each per image on the
    CPU, docs/performance.md); on the CPU it pays where the pixel work it skips costs more, which a unit states
    as the `smallest` view side at which it does (the blur's pass measured at 32, 96 and 224 px: 4 / 19 / 61 µs a
    view). On the GPU the skipped work is device work, while the pipeline's limit is its host side, so a unit
    computes every view and weights the result by its 0/1 decision instead."""
    return device == "cpu" and size >= smallest
