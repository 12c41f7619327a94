"""The RELICv2 pretraining pipeline: one DALI graph, CPU or GPU, yielding L large and S small views per image.

Steps per image: read (sharded, seeded order) -> decode ONCE (`cpu`, or `mixed` = nvJPEG on the
GPU) -> every augmentation's draws for all views at once (one random operator per image) -> per view,
the augmentations' operators along the view's path (`augmentations.view_path`): the crop window (+ flip)
cut and resized from the decoded image in uint8 -> large views only: saliency blend (p = `saliency_p`,
masked images only) -> BYOL augmentation (jitter, grayscale, blur, solarize) -> output as HWC uint8 pixels
(the trainer normalizes them on its own device, in one place: `relic_fast.step.prepare_views`).
The device is a parameter: `device="gpu"` puts the decoder in `mixed` mode so that every image
operator after it runs on the GPU; all random draws and crop windows stay on the CPU as per-sample
arguments. Outputs, in order: `large0..large{L-1}`, `small0..small{S-1}`, `labels`, and with
`debug=True` a float (L+S, len(STATS_FIELDS)) `stats` tensor per sample: one row per view, the
augmentations' own columns (`STATS_FIELDS`: the window in relative coordinates, x0 > x1 when flipped,
each augmentation's 0/1 decision, then drawn parameters such as the blur's sigma, drawn for every view).

Reading the graph: `draw_views` makes every random choice of an image at once (one uniform draw for the
columns every augmentation declares), each augmentation its own; each view then gets its `ViewSpec`
(settings fixed when the graph is built: a Python `if` on the recipe decides which operators exist) and its
`ViewDraws` (per-sample values sliced once: an `if` on a view's boolean coin is DALI's per-sample
conditional, used on the CPU where the branch skips pixel work), and every augmentation on its path applies
its operators, to all of the image's views at once (`make_views`). `graph_operators` counts the operators a
graph holds, by kind.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from nvidia.dali import fn, pipeline_def, types

from dali_pipelines.augmentations import AUGMENTATIONS, cpu_kernels, view_path
from dali_pipelines.augmentations.fused_pass import FusedPath
from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, View
from dali_pipelines.draws import ImageDraws, draw_views, each_view_draws, stats, stats_fields
from dali_pipelines.readers import ReadPlan, read_encoded
from dali_pipelines.recipe import ViewsConfig

STATS_FIELDS = stats_fields(AUGMENTATIONS)
"""Columns of the debug `stats` output, one row per view: the augmentations' own (`Augmentation.stats_columns`)."""


def output_names(views: ViewsConfig, debug: bool = False) -> list[str]:
    """Names of the pipeline's outputs, in order (the torch iterator's `output_map`)."""
    names = [f"large{k}" for k in range(views.num_large)] + [f"small{k}" for k in range(views.num_small)]
    return names + ["labels"] + (["stats"] if debug else [])


def make_views(image, image_draws: ImageDraws, views: ViewsConfig, device: str, units: Sequence[Augmentation]) -> list:
    """Every output view of an image: each augmentation along the views' path (`view_path`) acts on all of them
    at once (`Augmentation.apply_views`: one operator may serve several views), starting from the decoded `image`
    (the crop cuts each view from it); on the CPU, a run of units' work on a view is one compiled pass where the
    units hand it over (`fused_pass`). `image_draws`: every unit's draws of the image."""
    records = [View(spec, view_draws, views, device)
               for spec, view_draws in zip(views.view_specs(), each_view_draws(image_draws, views, units))]
    steps = {}
    if device == "cpu" and cpu_kernels.available():
        steps = {unit.name: unit.fused_step(image_draws[unit.name], records) for unit in units}
    path = FusedPath([image] * len(records), records, steps)
    for unit in view_path(units):
        path.through(unit)
    return path.finish()


def multi_view_graph(plan: ReadPlan, views: ViewsConfig, device: str, debug: bool,
                     units: Sequence[Augmentation] = AUGMENTATIONS):
    """The pipeline body (see the module docstring) over the augmentation `units`; returns the outputs in
    `output_names` order."""
    encoded = read_encoded(plan)
    images = fn.decoders.image(encoded.images, device="mixed" if device == "gpu" else "cpu",
                               output_type=types.RGB)
    inputs = ImageInputs(fn.peek_image_shape(encoded.images), encoded.mask_bytes, encoded.has_mask, device)
    draws = draw_views(inputs, views, units)
    for unit in units:
        images = unit.prepare(images, inputs, views)
    outputs = make_views(images, draws, views, device, units)
    outputs.append(encoded.labels)
    if debug:
        outputs.append(stats(draws, views, units))
    return tuple(outputs)


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def multi_view_pipeline(plan: ReadPlan, views: ViewsConfig, device: str = "cpu", debug: bool = False,
                        units: Sequence[Augmentation] = AUGMENTATIONS):
    """The pretraining pipeline; call with `batch_size`, `num_threads`, `device_id`, `seed` (and
    `checkpoint=` to resume) like any `@pipeline_def`. `units`: the augmentations (a test may hand
    its own list; the debug `stats` columns are then `stats_fields(units)`)."""
    return multi_view_graph(plan, views, device, debug, units)


def graph_operators(pipe) -> list[tuple[str, str]]:
    """(operator kind, backend) of every operator of a constructed pipeline's graph: ("Resize", "gpu"),
    ("Image", "mixed"), ("Split", "cpu")... (walked back from the outputs DALI keeps until the pipeline is built)."""
    seen, stack = {}, list(pipe._graph_out)
    while stack:
        node = stack.pop()
        if id(node.source) not in seen:
            seen[id(node.source)] = node.source
            stack += list(node.source.inputs)
    return [(op.name.strip("_").rsplit("_", 1)[0], op._op.device) for op in seen.values()]


def operator_counts(plan: ReadPlan, views: ViewsConfig, device: str) -> dict[str, int]:
    """Operators by kind, most frequent first, in the graph of `views` on `device` ("cpu" or "gpu"; constructed
    for device 0, never built, so a machine without a GPU counts the GPU graph too)."""
    pipe = multi_view_pipeline(plan, views, device, False, batch_size=2, num_threads=1,
                               device_id=0 if device == "gpu" else None)
    return dict(Counter(kind for kind, _ in graph_operators(pipe)).most_common())
