"""Saliency blending: a large view cut from the background-removed image (RELICv2's `x_m`).

Per large view and sample, with probability `saliency_p` and only for images that have a mask, the
view keeps its foreground and gets a new background: `view * a + fill * (1 - a)`, `a` the saliency
mask (0..255 -> 0..1) cut with the view's own crop window (same relative ROI, same flip, so image
and mask stay aligned whatever their resolutions). Fills: the dataset mean colour, Gaussian noise
with the dataset's per-channel mean and std (normalizes to N(0, 1)), or the same view of another
image of the batch. The mask is decoded only for samples where some large view blends. It acts on
the cut view, before BYOL's colour changes (`Stage.BACKGROUND`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from dali_pipelines.augmentations.crop import Crop, crop
from dali_pipelines.augmentations.flip import Flip
from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, Stage, StatsColumns, StatsGroup, View
from dali_pipelines.draws import drawn, flags
from dali_pipelines.recipe import ViewsConfig, pixel_scale


class SaliencyDraws(NamedTuple):
    """The unit's part of one image: (V,) 0/1 blend flags, and the decoded mask (None: no masks read)."""

    blend: object
    masks: object


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
    mean = types.Constant(pixel_scale(views.mean))
    if views.saliency_fill == "mean":
        return mean
    if views.saliency_fill == "noise":
        std = types.Constant(pixel_scale(views.std))
        return mean + std * fn.random.normal(view)
    return fn.cast(other, dtype=types.FLOAT)


def blend(view, masks, window, size: int, views: ViewsConfig, other=None):
    """`view` with its background replaced, its mask cut with the view's own `window`; call it inside
    the `if drawn(...)` on the view's blend flag."""
    alpha = fn.cast(crop(masks, window, size, types.INTERP_LINEAR), dtype=types.FLOAT) * (1.0 / 255.0)
    mixed = fn.cast(view, dtype=types.FLOAT) * alpha + _fill(view, views, other) * (1.0 - alpha)
    return fn.cast(mixed, dtype=types.UINT8)


class Saliency(Augmentation):
    """The blend coins of the large views, the masks they need, and the blend of a view."""

    name = "saliency"
    settings = ("saliency_p", "saliency_fill")
    stage = Stage.BACKGROUND
    off = {"saliency_p": 0.0}
    ablation_group = "saliency masking"
    ablation_advice = ("saliency masking costs most: it decodes a mask per image; lower views.saliency_p or "
                       "store masks smaller")
    stats_columns = (StatsColumns(("saliency",), StatsGroup.DECISION),)

    def is_on(self, views: ViewsConfig) -> bool:
        """Blending at all."""
        return views.saliency_p > 0

    def draw(self, image: ImageInputs, views: ViewsConfig, earlier) -> SaliencyDraws:
        """The blend flags and the masks they need; without masks (or at p = 0), zero flags and no mask."""
        if image.mask_bytes is None or views.saliency_p <= 0:
            return SaliencyDraws(0.0 * earlier[Flip.name], None)  # zeros for the debug column
        blends = draw_blends(views, image.has_mask)
        return SaliencyDraws(blends, decode_masks(image.mask_bytes, blends, image.device))

    def per_view(self, draws: SaliencyDraws, views: ViewsConfig) -> list[SaliencyDraws]:
        """Each view's flag, and the image's mask."""
        return [SaliencyDraws(draws.blend[k], draws.masks) for k in range(views.num_views)]

    def apply(self, x, view: View):
        """The blend where drawn, on large views of images with a mask."""
        record = view.draws[self.name]
        if record.masks is not None and view.spec.large:
            other = other_images(x) if view.views.saliency_fill == "other_image" else None
            if drawn(record.blend):
                x = blend(x, record.masks, view.draws[Crop.name], view.spec.size, view.views, other)
        return x

    def stats(self, draws: SaliencyDraws) -> tuple:
        """The blend flags."""
        return (draws.blend,)
