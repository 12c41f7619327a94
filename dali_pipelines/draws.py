"""Every random draw of one image's views, made once per image as (V,)-vectors (V = L + S views).

Drawing all views' crop windows, coins and jitter parameters in a handful of vector ops, instead of
a handful per view, cuts the pipeline's per-batch operator count (and CPU overhead) several-fold;
each view then picks its row. Probabilities are per view (blur and solarize alternate between the
view settings), so a coin is `uniform(shape=[V]) < p_view`.

Crop windows: ONE attempt, clamped (BYOL's reference code): area a ~ U(area of the view), aspect
r = exp(U(log range)), relative width sqrt(a r H / W) and height sqrt(a W / (r H)), each clamped to
1 (the whole side), offset uniform over the remaining room. A flip swaps the window's x start and
end (`fn.resize` then mirrors for free, and a saliency mask cut with the same window stays aligned).

The graph then hands each view its own record, `ViewDraws`: its window, its flags, its sigma and the
colour maps and blur weights derived from them. Two kinds of `if` shape the graph: a Python `if` on
the config (`ViewsConfig`, `ViewSpec`) decides which operators exist; `if drawn(flag):` is a DALI
conditional that runs its branch for the samples that drew the flag.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.recipe import ViewsConfig

ORDERS = list(itertools.permutations(range(4)))
"""The 24 orders of the four jitter ops (brightness, contrast, saturation, hue)."""


class ImageDraws(NamedTuple):
    """Every view's draws of one image; each field is a per-sample (V,) float vector (flags 0/1) unless
    noted. `ViewDraws` is one view's part."""

    windows: object     # (V, 4): y0, x0, y1, x1 relative; x0 > x1 when flipped
    flip: object
    jitter: object
    gray: object
    blur: object
    solarize: object
    sigma: object       # blur sigma
    shift: object       # additive brightness in pixel levels (0 unless jitter, additive mode)
    factor: object      # multiplicative brightness (1 unless jitter, multiplicative mode)
    contrast: object
    saturation: object
    angle: object       # hue rotation, radians
    order: object       # (V,) int32 index into ORDERS, or None (fixed order / fused jitter)


class Window(NamedTuple):
    """A view's crop window in relative coordinates: `start` (y0, x0) and `end` (y1, x1), x0 > x1 when
    flipped; the ROI of `fn.resize`."""

    start: object
    end: object


class ViewDraws(NamedTuple):
    """One view's per-sample draws, and what the graph derives from them."""

    window: Window      # the flip is in it (x0 > x1)
    jitter: object
    gray: object
    blur: object
    solarize: object
    blend: object       # saliency blend flag (0 for small views and images without a mask)
    sigma: object       # blur sigma in pixels
    colour: object      # the view's colour map(s): `augment.ColourMaps`, or a tuple of four (jitter_clip "each")
    blur_weights: object  # (1, taps) Gaussian weights at `sigma` (the CPU blur's filter)
    blur_half: object   # half-width of the blur window actually used


def drawn(flag):
    """The condition of a per-sample DALI `if`: true for the samples whose `flag` is set."""
    return flag > 0.0


def per_view(values) -> object:
    """A constant float (V,) vector."""
    return types.Constant(np.asarray(values, dtype=np.float32))


def column(vector, views: int):
    """(V,) -> (V, 1) for broadcasting against per-view rows."""
    return fn.reshape(vector, shape=[views, 1])


def flags(probabilities: list[float]):
    """(V,) float 0/1 flags, flag k set with probability `probabilities[k]` (per sample)."""
    draw = fn.random.uniform(range=[0.0, 1.0], shape=[len(probabilities)])
    return fn.cast(draw < per_view(probabilities), dtype=types.FLOAT)


def symmetric(strength: float, applied, views: int):
    """applied * U(-strength, strength) per view; zero (no draw) for a zero strength."""
    if strength <= 0.0:
        return 0.0 * applied
    return applied * fn.random.uniform(range=[-strength, strength], shape=[views])


def crop_windows(shape, views: ViewsConfig, flip):
    """(V, 4) one-attempt clamped windows for an image of `shape` (H, W, C), x swapped where `flip`."""
    count = views.num_views
    low = per_view([views.large_area[0]] * views.num_large + [views.small_area[0]] * views.num_small)
    high = per_view([views.large_area[1]] * views.num_large + [views.small_area[1]] * views.num_small)
    uniform = fn.random.uniform(range=[0.0, 1.0], shape=[3, count])
    area = low + uniform[0] * (high - low)
    log_low, log_high = math.log(views.aspect_ratio[0]), math.log(views.aspect_ratio[1])
    ratio = dmath.exp(log_low + uniform[1] * (log_high - log_low))
    aspect = fn.cast(shape[0], dtype=types.FLOAT) / fn.cast(shape[1], dtype=types.FLOAT)  # H / W
    width = dmath.min(dmath.sqrt(area * ratio * aspect), 1.0)
    height = dmath.min(dmath.sqrt(area / (ratio * aspect)), 1.0)
    room = fn.random.uniform(range=[0.0, 1.0], shape=[2, count])
    y0, x0 = room[0] * (1.0 - height), room[1] * (1.0 - width)
    x_start, x_end = x0 + flip * width, x0 + width - flip * width
    return fn.stack(y0, x_start, y0 + height, x_end, axis=1)


def draw_views(shape, views: ViewsConfig) -> ImageDraws:
    """Every random choice of one image's views (see the module docstring), for an image of `shape`."""
    count = views.num_views
    specs = views.view_specs()
    flip = flags([views.flip_p] * count)
    jitter = flags([views.jitter_p] * count)
    additive = views.brightness_mode == "additive"
    shift = 255.0 * symmetric(views.brightness if additive else 0.0, jitter, count)
    factor = 1.0 + symmetric(0.0 if additive else views.brightness, jitter, count)
    order = None
    if views.jitter_clip == "each" and views.jitter_order == "random":
        uniform = fn.random.uniform(range=[0.0, float(len(ORDERS))], shape=[count])
        order = fn.cast(dmath.floor(uniform), dtype=types.INT32)  # a cast alone would round
    return ImageDraws(
        windows=crop_windows(shape, views, flip), flip=flip, jitter=jitter,
        gray=flags([views.grayscale_p] * count), blur=flags([spec.blur_p for spec in specs]),
        solarize=flags([spec.solarize_p for spec in specs]),
        sigma=views.blur_sigma[0] + fn.random.uniform(range=[0.0, 1.0], shape=[count])
        * (views.blur_sigma[1] - views.blur_sigma[0]),
        shift=shift, factor=factor, contrast=1.0 + symmetric(views.contrast, jitter, count),
        saturation=1.0 + symmetric(views.saturation, jitter, count),
        angle=2.0 * math.pi * symmetric(views.hue, jitter, count), order=order)


def stats(draws: ImageDraws, saliency):
    """(V, 11) float debug rows: window (4), flip, jitter, gray, blur, solarize, saliency, sigma."""
    return fn.cat(draws.windows, fn.stack(draws.flip, draws.jitter, draws.gray, draws.blur, draws.solarize,
                                          saliency, draws.sigma, axis=1), axis=1)
