"""The view recipe's augmentations, one unit each (`unit.Augmentation`), and `AUGMENTATIONS`, the one list
the multi-view graph, the debug statistics and the profiler's ablations loop over.

Adding an augmentation: its `[views]` keys in `recipe.ViewsConfig` (documented and checked there, the
typed config section), its unit in a file of this folder, its line in `AUGMENTATIONS`, and its test
in `tests/dali_pipelines/`.
"""

from __future__ import annotations

from typing import Sequence

from dali_pipelines.augmentations.blur import Blur
from dali_pipelines.augmentations.colour import Colour
from dali_pipelines.augmentations.crop import Crop
from dali_pipelines.augmentations.flip import Flip
from dali_pipelines.augmentations.saliency import Saliency
from dali_pipelines.augmentations.solarize import Solarize
from dali_pipelines.augmentations.unit import Augmentation
from dali_pipelines.recipe import ViewsConfig

AUGMENTATIONS: tuple[Augmentation, ...] = (
    Flip(),      # first: the crop's window reads the flip
    Crop(),
    Colour(),
    Blur(),
    Solarize(),
    Saliency(),  # last in the draws and the debug columns; on a view's path it acts after the crop (its stage)
)
"""Every augmentation, in the order of the draws, of the debug columns and of the ablations; a view's path
orders them by `Augmentation.stage` first (`view_path`)."""


def view_path(units: Sequence[Augmentation] = AUGMENTATIONS) -> list[Augmentation]:
    """The units in the order their operators act on a view: by stage, then in the list's order."""
    return sorted(units, key=lambda unit: unit.stage)


def ablations(views: ViewsConfig, units: Sequence[Augmentation] = AUGMENTATIONS) -> list[tuple[str, ViewsConfig]]:
    """(group, `views` with that augmentation off) for every unit with an ablation group that `views` uses,
    in the list's order: the profiler measures each group's cost as the time it adds."""
    return [(unit.ablation_group, views.replace(**unit.off)) for unit in units
            if unit.ablation_group and unit.is_on(views)]


def without_augmentations(views: ViewsConfig, units: Sequence[Augmentation] = AUGMENTATIONS) -> ViewsConfig:
    """`views` with every augmentation off: decode and crops only (the profiler's bare recipe)."""
    changes = {}
    for unit in units:
        changes.update(unit.off)
    return views.replace(**changes)


def ablation_advice(group: str, units: Sequence[Augmentation] = AUGMENTATIONS) -> str:
    """The profile report's suggestion when `group` costs most ("" for a group no unit names)."""
    return next((unit.ablation_advice for unit in units if unit.ablation_group == group), "")
