"""The RELICv2 pretraining pipeline: one DALI graph, CPU or GPU, yielding L large and S small views per image.

Steps per image: read (sharded, seeded order) -> decode ONCE (`cpu`, or `mixed` = nvJPEG on the
GPU) -> per view: a one-attempt clamped crop window (+ flip), cut and resized from the decoded
image in uint8 -> large views only: saliency blend (p = `saliency_p`, masked images only) -> BYOL
augmentation (jitter, grayscale, blur, solarize: `augment.py`) -> output as HWC uint8 pixels (the
trainer normalizes them on its own device, in one place: `relic_fast.step.prepare_views`).
The device is a parameter: `device="gpu"` puts the decoder in `mixed` mode so that every image
operator after it runs on the GPU; all random draws and crop windows stay on the CPU as per-sample
arguments. Outputs, in order: `large0..large{L-1}`, `small0..small{S-1}`, `labels`, and with
`debug=True` a float (L+S, 11) `stats` tensor per sample: per view (y0, x0, y1, x1, flip, jitter,
gray, blur, solarize, saliency, sigma) with the window in relative coordinates (x0 > x1 when
flipped) and the blur's sigma (drawn for every view, used where blur is 1).
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from dali_pipelines import augment, draws, saliency
from dali_pipelines.readers import ReadPlan, read_encoded
from dali_pipelines.recipe import ViewsConfig, default_interpolation

STATS_FIELDS = ("y0", "x0", "y1", "x1", "flip", "jitter", "gray", "blur", "solarize", "saliency", "sigma")
"""Columns of the debug `stats` output, one row per view."""

def output_names(views: ViewsConfig, debug: bool = False) -> list[str]:
    """Names of the pipeline's outputs, in order (the torch iterator's `output_map`)."""
    names = [f"large{k}" for k in range(views.num_large)] + [f"small{k}" for k in range(views.num_small)]
    return names + ["labels"] + (["stats"] if debug else [])


def colour_maps(d, views: ViewsConfig):
    """The per-view colour maps of the jitter form in use (`augment.py`)."""
    if views.jitter_clip == "end":
        return augment.fused_maps(d, views.num_views)
    return augment.exact_maps(d, views.num_views)


def blur_kernels(d, views: ViewsConfig) -> list:
    """(kernels, row) per view: Gaussian weights and half-widths, large and small views in one go each."""
    large = augment.gaussian_rows(d.sigma[0:views.num_large], augment.blur_taps(views.large_size), views.num_large)
    rows = [(large, k) for k in range(views.num_large)]
    if views.num_small:
        small = augment.gaussian_rows(d.sigma[views.num_large:views.num_views],
                                      augment.blur_taps(views.small_size), views.num_small)
        rows += [(small, k) for k in range(views.num_small)]
    return rows


def multi_view_graph(plan: ReadPlan, views: ViewsConfig, device: str, debug: bool):
    """The pipeline body (see the module docstring); returns the outputs in `output_names` order."""
    encoded = read_encoded(plan)
    images = fn.decoders.image(encoded.images, device="mixed" if device == "gpu" else "cpu",
                               output_type=types.RGB)
    d = draws.draw_image(fn.peek_image_shape(encoded.images), views)
    interpolation = default_interpolation(device) if views.interpolation == "auto" else views.interpolation
    interp = types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR
    blends = 0.0 * d.flip
    masks = None
    if encoded.mask_bytes is not None and views.saliency_p > 0:
        blends = saliency.draw_blends(views, encoded.has_mask)
        masks = saliency.decode_masks(encoded.mask_bytes, blends, device)
    maps, kernels = colour_maps(d, views), blur_kernels(d, views)
    outputs = []
    for k in range(views.num_views):
        size = views.large_size if k < views.num_large else views.small_size
        view = augment.cut(images, d.windows, k, size, interp)
        if masks is not None and k < views.num_large:
            other = saliency.other_images(view) if views.saliency_fill == "other_image" else None
            if blends[k] > 0.0:
                view = saliency.blend(view, masks, d.windows, k, size, views, other)
        view = augment.augment_view(view, k, size, d, maps, *kernels[k], views, device)
        outputs.append(view)
    outputs.append(encoded.labels)
    if debug:
        outputs.append(draws.stats(d, blends))
    return tuple(outputs)


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def multi_view_pipeline(plan: ReadPlan, views: ViewsConfig, device: str = "cpu", debug: bool = False):
    """The pretraining pipeline; call with `batch_size`, `num_threads`, `device_id`, `seed` (and
    `checkpoint=` to resume) like any `@pipeline_def`."""
    return multi_view_graph(plan, views, device, debug)
