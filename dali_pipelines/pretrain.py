"""The RELICv2 pretraining pipeline: one DALI graph, CPU or GPU, yielding L large and S small views per image.

Steps per image: read (sharded, seeded order) -> decode ONCE (`cpu`, or `mixed` = nvJPEG on the
GPU) -> per view: a one-attempt clamped crop window (+ flip), cut and resized from the decoded
image in uint8 (`augment.crop`) -> large views only: saliency blend (p = `saliency_p`, masked
images only) -> BYOL augmentation (jitter, grayscale, blur, solarize: `augment.py`) -> output as
HWC uint8 pixels (the trainer normalizes them on its own device, in one place:
`relic_fast.step.prepare_views`).
The device is a parameter: `device="gpu"` puts the decoder in `mixed` mode so that every image
operator after it runs on the GPU; all random draws and crop windows stay on the CPU as per-sample
arguments. Outputs, in order: `large0..large{L-1}`, `small0..small{S-1}`, `labels`, and with
`debug=True` a float (L+S, 11) `stats` tensor per sample: per view (y0, x0, y1, x1, flip, jitter,
gray, blur, solarize, saliency, sigma) with the window in relative coordinates (x0 > x1 when
flipped) and the blur's sigma (drawn for every view, used where blur is 1).

Reading the graph: `draw_views` makes every random choice of an image at once; each view then gets
its `ViewSpec` (settings fixed when the graph is built: a Python `if` on it decides which operators
exist) and its `ViewDraws` (per-sample values: `if drawn(flag):` is DALI's per-sample conditional).
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from dali_pipelines import augment, saliency
from dali_pipelines.draws import ImageDraws, ViewDraws, Window, draw_views, drawn, stats
from dali_pipelines.readers import ReadPlan, read_encoded
from dali_pipelines.recipe import ViewsConfig, ViewSpec, default_interpolation

STATS_FIELDS = ("y0", "x0", "y1", "x1", "flip", "jitter", "gray", "blur", "solarize", "saliency", "sigma")
"""Columns of the debug `stats` output, one row per view."""


def output_names(views: ViewsConfig, debug: bool = False) -> list[str]:
    """Names of the pipeline's outputs, in order (the torch iterator's `output_map`)."""
    names = [f"large{k}" for k in range(views.num_large)] + [f"small{k}" for k in range(views.num_small)]
    return names + ["labels"] + (["stats"] if debug else [])


def each_view_draws(draws: ImageDraws, blends, views: ViewsConfig) -> list[ViewDraws]:
    """Each view's own record of the image's draws, with its colour map(s) and blur weights."""
    colours = augment.view_colour_maps(draws, views)
    kernels = augment.view_blur_kernels(draws.sigma, views)
    return [ViewDraws(window=Window(draws.windows[k, 0:2], draws.windows[k, 2:4]), jitter=draws.jitter[k],
                      gray=draws.gray[k], blur=draws.blur[k], solarize=draws.solarize[k], blend=blends[k],
                      sigma=draws.sigma[k], colour=colours[k], blur_weights=kernels[k][0], blur_half=kernels[k][1])
            for k in range(views.num_views)]


def make_view(images, masks, spec: ViewSpec, draw: ViewDraws, views: ViewsConfig, interp, device: str):
    """One output view: its crop, then (large views, where masks exist) the saliency blend, then BYOL's
    augmentation."""
    view = augment.crop(images, draw.window, spec.size, interp)
    if masks is not None and spec.large:
        other = saliency.other_images(view) if views.saliency_fill == "other_image" else None
        if drawn(draw.blend):
            view = saliency.blend(view, masks, draw.window, spec.size, views, other)
    return augment.augment_view(view, spec, draw, views, device)


def multi_view_graph(plan: ReadPlan, views: ViewsConfig, device: str, debug: bool):
    """The pipeline body (see the module docstring); returns the outputs in `output_names` order."""
    encoded = read_encoded(plan)
    images = fn.decoders.image(encoded.images, device="mixed" if device == "gpu" else "cpu",
                               output_type=types.RGB)
    draws = draw_views(fn.peek_image_shape(encoded.images), views)
    interpolation = default_interpolation(device) if views.interpolation == "auto" else views.interpolation
    interp = types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR
    blends, masks = 0.0 * draws.flip, None
    if encoded.mask_bytes is not None and views.saliency_p > 0:
        blends = saliency.draw_blends(views, encoded.has_mask)
        masks = saliency.decode_masks(encoded.mask_bytes, blends, device)
    outputs = [make_view(images, masks, spec, draw, views, interp, device)
               for spec, draw in zip(views.view_specs(), each_view_draws(draws, blends, views))]
    outputs.append(encoded.labels)
    if debug:
        outputs.append(stats(draws, blends))
    return tuple(outputs)


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def multi_view_pipeline(plan: ReadPlan, views: ViewsConfig, device: str = "cpu", debug: bool = False):
    """The pretraining pipeline; call with `batch_size`, `num_threads`, `device_id`, `seed` (and
    `checkpoint=` to resume) like any `@pipeline_def`."""
    return multi_view_graph(plan, views, device, debug)
