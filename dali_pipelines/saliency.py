"""Saliency blending: a large view cut from the background-removed image (RELICv2's `x_m`).

Per large view and sample, with probability `saliency_p` and only for images that have a mask, the
view keeps its foreground and gets a new background: `view * a + fill * (1 - a)`, `a` the saliency
mask (0..255 -> 0..1) cut with the view's own crop window (same relative ROI, same flip, so image
and mask stay aligned whatever their resolutions). Fills: the dataset mean colour, Gaussian noise
with the dataset's per-channel mean and std (normalizes to N(0, 1)), or the same view of another
image of the batch. The mask is decoded only for samples where some large view blends.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from dali_pipelines.augment import crop
from dali_pipelines.draws import flags
from dali_pipelines.recipe import ViewsConfig


def draw_blends(views: ViewsConfig, has_mask):
    """(V,) float flags: large view k blends with probability `saliency_p`, only where the image has a
    mask; small views never."""
    probabilities = [views.saliency_p] * views.num_large + [0.0] * views.num_small
    return flags(probabilities) * fn.cast(has_mask, dtype=types.FLOAT)


def decode_masks(mask_bytes, blends, device: str):
    """The grayscale (H, W, 1) masks of the samples where any view blends; a 1x1 foreground elsewhere."""
    if fn.reductions.sum(blends) > 0.0:
        masks = fn.decoders.image(mask_bytes, device="cpu", output_type=types.GRAY)
    else:
        masks = types.Constant(np.full((1, 1, 1), 255, np.uint8), layout="HWC")
    return masks.gpu() if device == "gpu" else masks


def other_images(view):
    """The same view of the next sample in the batch (a batch-level op: call it outside conditionals)."""
    size = Pipeline.current().max_batch_size
    return fn.permute_batch(view, indices=[(i + 1) % size for i in range(size)])


def _fill(view, views: ViewsConfig, other):
    """Float background for `view`: mean colour, Gaussian noise, or `other` (another image)."""
    mean = types.Constant(np.asarray(views.mean, np.float32) * 255)
    if views.saliency_fill == "mean":
        return mean
    if views.saliency_fill == "noise":
        std = types.Constant(np.asarray(views.std, np.float32) * 255)
        return mean + std * fn.random.normal(view)
    return fn.cast(other, dtype=types.FLOAT)


def blend(view, masks, window, size: int, views: ViewsConfig, other=None):
    """`view` with its background replaced, its mask cut with the view's own `window`; call it inside
    the `if drawn(...)` on the view's blend flag."""
    alpha = fn.cast(crop(masks, window, size, types.INTERP_LINEAR), dtype=types.FLOAT) * (1.0 / 255.0)
    mixed = fn.cast(view, dtype=types.FLOAT) * alpha + _fill(view, views, other) * (1.0 - alpha)
    return fn.cast(mixed, dtype=types.UINT8)
