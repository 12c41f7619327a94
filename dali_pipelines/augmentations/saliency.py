"""Saliency blending: a large view cut from the background-removed image (RELICv2's `x_m`).

Per large view and sample, with probability `saliency_p` and only for images that have a mask, the
view keeps its foreground and gets a new background: `view * a + fill * (1 - a)`, `a` the saliency
mask (0..255 -> 0..1) cut with the view's own crop window (same relative ROI, same flip, so image
and mask stay aligned whatever their resolutions). Fills: the dataset mean colour, Gaussian noise
with the dataset's per-channel mean and std (normalizes to N(0, 1)), or the same view of another
image of the batch. The mask is decoded only for samples where some large view blends. It acts on
the cut view, before BYOL's colour changes (`Stage.BACKGROUND`). On the CPU a view cuts its mask inside a per-sample
conditional (10% of views: the branch skips the mask's resize), and with the mean fill the blend itself is a step
of the compiled view pass (`Saliency.fused_step`), elsewhere inside the conditional too; on the GPU every large view
goes through the blend with a weight of 0 where it was not drawn (`unit.branch_skips_work`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from dali_pipelines.augmentations.crop import Crop, crop
from dali_pipelines.augmentations.unit import (Augmentation, FusedStep, ImageInputs, Stage, StatsColumns, StatsGroup,
                                               View, branch_skips_work)
from dali_pipelines.draws import Coin, Uniforms, as_float, constant
from dali_pipelines.recipe import ViewsConfig, pixel_scale


class SaliencyDraws(NamedTuple):
    """The unit's part of one image: (V, 1) bool blend decisions (False: no masks read, or p = 0), the masks as
    weights (`mask_weights`), the fill colour, and on the GPU each view's share of the fill, 1 / 255 or 0 ((V, 1))."""

    blend: object
    weights: object = None
    fill: object = None
    share: object = None


class SaliencyView(NamedTuple):
    """One view's record: its decision (a scalar bool, or False), the image's mask weights and fill, and on the
    GPU its share."""

    blend: object
    weights: object = None
    fill: object = None
    share: object = None


def mask_weights(mask_bytes, any_blend, device: str):
    """The (H, W, 1) weights of the decoded grayscale masks, for the samples where `any_blend`; a 1x1 foreground
    elsewhere. CPU: the uint8 masks themselves (0..255: a view's cut is scaled to 0..1, not the whole mask);
    GPU: the fill's float weight before a view's share, 255 - mask (0..255)."""
    if any_blend:
        masks = fn.decoders.image(mask_bytes, device="cpu", output_type=types.GRAY)
    else:
        masks = types.Constant(np.full((1, 1, 1), 255, np.uint8), layout="HWC")
    return 255.0 - masks.gpu() if device == "gpu" else masks


def other_images(view):
    """The same view of the next sample in the batch (a batch-level op: call it outside conditionals)."""
    size = Pipeline.current().max_batch_size
    return fn.permute_batch(view, indices=[(i + 1) % size for i in range(size)])


def fill_colour(views: ViewsConfig):
    """The float (3,) mean colour of the fills, once per image (the `mean` fill, and the `noise` fill's centre)."""
    return types.Constant(pixel_scale(views.mean))


def _fill(view, mean, views: ViewsConfig, other):
    """Float background for `view`: the `mean` colour, Gaussian noise about it, or `other` (another image)."""
    if views.saliency_fill == "mean":
        return mean
    if views.saliency_fill == "noise":
        return mean + types.Constant(pixel_scale(views.std)) * fn.random.normal(view)
    return fn.cast(other, dtype=types.FLOAT)


def blend(view, record: SaliencyView, window, size: int, views: ViewsConfig, other=None):
    """`view` with its background replaced, its mask cut with the view's own `window`: fill + (view - fill) a,
    a the mask on 0..1 (cut in uint8, then scaled: the view's pixels, not the whole mask's). Call it inside the
    `if` on the view's decision."""
    alpha = crop(record.weights, window, size, types.INTERP_LINEAR) * (1.0 / 255.0)
    fill = _fill(view, record.fill, views, other)
    return fn.cast(fill + (view - fill) * alpha, dtype=types.UINT8)


def cut_weights(record: SaliencyView, window, size: int):
    """The view's cut of its mask where it blends (uint8 (size, size, 1), the view pass's blend weights), the
    image's masks uncut elsewhere (never read there: a view that does not blend skips the step)."""
    weights = record.weights
    if record.blend:
        weights = crop(record.weights, window, size, types.INTERP_LINEAR)
    return weights


def weighted_blend(view, record: SaliencyView, window, size: int, views: ViewsConfig, other=None):
    """The GPU's blend of every view, no conditional: view + (fill - view) w, w = share (255 - mask) / 255 cut
    with the view's `window`: the blend where the view's share is 1 / 255, the view itself where it is 0."""
    weight = crop(record.weights, window, size, types.INTERP_LINEAR) * record.share
    return fn.cast(view + (_fill(view, record.fill, views, other) - view) * weight, dtype=types.UINT8)


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

    def columns(self, views: ViewsConfig) -> tuple:
        """A coin per view (large views at `saliency_p`, small ones never), when blending at all."""
        if views.saliency_p <= 0:
            return ()
        return (Coin("saliency", (views.saliency_p,) * views.num_large + (0.0,) * views.num_small),)

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: Uniforms | None, earlier) -> SaliencyDraws:
        """The blend decisions (coin and mask) and the masks they need; without masks (or at p = 0), none."""
        if image.mask_bytes is None or views.saliency_p <= 0:
            return SaliencyDraws(False)
        blends = uniforms.coin("saliency") & image.has_mask
        share = blends * (1.0 / 255.0)
        weights = mask_weights(image.mask_bytes, fn.reductions.max(share) > 0.0, image.device)
        return SaliencyDraws(blends, weights, fill_colour(views), None if branch_skips_work(image.device) else share)

    def per_view(self, draws: SaliencyDraws, views: ViewsConfig) -> list[SaliencyView]:
        """Each large view's decision (and share), and the image's masks; small views never blend."""
        if draws.blend is False:
            return [SaliencyView(False)] * views.num_views
        return [SaliencyView(draws.blend[k, 0], draws.weights, draws.fill,
                             None if draws.share is None else draws.share[k, 0])
                if spec.large else SaliencyView(False) for k, spec in enumerate(views.view_specs())]

    def apply(self, x, view: View):
        """The blend where drawn (CPU: a per-sample conditional; GPU: every large view, weighted by its share)."""
        record = view.draws[self.name]
        if record.blend is False:
            return x
        other = other_images(x) if view.views.saliency_fill == "other_image" else None
        window = view.draws[Crop.name]
        if record.share is not None:
            return weighted_blend(x, record, window, view.spec.size, view.views, other)
        if record.blend:
            x = blend(x, record, window, view.spec.size, view.views, other)
        return x

    def fused_step(self, draws: SaliencyDraws, views: Sequence[View]) -> FusedStep | None:
        """On the CPU with the mean fill, the blend of the large views as a step of the view pass, each view's mask
        cut in its conditional (`cut_weights`); small views are left alone. None for the other fills (their blend
        stays in the conditional) and where nothing blends."""
        config = views[0].views
        if draws.blend is False or draws.share is not None or config.saliency_fill != "mean":
            return None
        large = [k for k, view in enumerate(views) if view.spec.large]
        weights = {k: cut_weights(views[k].draws[self.name], views[k].draws[Crop.name], views[k].spec.size)
                   for k in large}
        fill = constant(np.tile(pixel_scale(config.mean), (len(views), 1)))
        return FusedStep("blend", fn.cat(draws.blend * 1.0, fill, axis=1), 4, frozenset(large),
                         frozenset(range(len(views))) - frozenset(large), weights=weights)

    def stats(self, draws: SaliencyDraws, views: ViewsConfig) -> tuple:
        """The blend decisions."""
        return (as_float(draws.blend, views.num_views),)
