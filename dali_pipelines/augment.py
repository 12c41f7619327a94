"""The per-view BYOL augmentation as DALI graph pieces: crop window, colour jitter, grayscale, blur, solarize.

Every piece works on uint8 HWC views (a quarter of float32's bytes; DALI's uint8 kernels are the
fast ones) and draws its randomness per sample: probabilities are per-sample coins, applied either
through DALI conditionals (`if coin:` runs the branch only for the samples that drew it) or as
per-sample arguments that make the op an identity (a matrix of 1s, a window of 1).

Crop: ONE attempt, clamped (BYOL's reference code): area a ~ U(area), log-aspect ~ U(log range),
w = sqrt(a r W/H)... in relative units, each side clamped to the image, offset uniform. The window
is explicit (relative `roi_start`/`roi_end` of `fn.resize`), so the saliency mask is cut with
exactly the same window, and a horizontal flip is the same window with x start/end swapped (free).

Colour jitter (p = `jitter_p`): brightness (TF's additive delta, or DALI-style factor), contrast
about each channel's image mean, saturation (chroma scale; at hue 0 this is torchvision's blend
with the luma-gray image) and hue (rotation of the chroma plane about the gray axis, as DALI's
`fn.hsv`): all four are affine colour maps, so without clipping between them they commute and
compose into ONE 3x4 matrix (`jitter_clip = "end"`: one pass, clip once). `jitter_clip = "each"`
is BYOL's exact form: the four ops in a per-sample random order (`jitter_order`), each its own
pass, clipped after each. Grayscale (weights 0.2989, 0.5870, 0.1140) folds into the same matrix
in the fused form (luma is untouched by saturation and hue, so gray(K x) = gray(x)).
TF's hue/saturation work in HSV space; ours are the linear (YIQ-like) forms DALI implements.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.recipe import ViewsConfig

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""ITU-R 601 luma weights of BYOL's grayscale (tf.image.rgb_to_grayscale)."""

_CHROMA_ROWS = np.array([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])  # YIQ's I and Q rows (sum 0)
_TO_YIQ = np.vstack([GRAY_WEIGHTS, _CHROMA_ROWS])
_FROM_YIQ = np.linalg.inv(_TO_YIQ)


def _yiq_basis(block: np.ndarray) -> np.ndarray:
    """RGB matrix of the YIQ-space matrix `block` (3x3)."""
    return (_FROM_YIQ @ block @ _TO_YIQ).astype(np.float32)


LUMA_PART = _yiq_basis(np.diag([1.0, 0.0, 0.0]))
"""K = LUMA_PART + s cos(t) CHROMA_SCALE + s sin(t) CHROMA_ROTATE: saturation s, hue angle t."""
CHROMA_SCALE = _yiq_basis(np.diag([0.0, 1.0, 1.0]))
CHROMA_ROTATE = _yiq_basis(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
GRAY_MATRIX = np.tile(np.asarray(GRAY_WEIGHTS, np.float32), (3, 1))
"""Grayscale replicated to 3 channels, as a colour matrix."""

SOLARIZE_TABLE = [float(v if v < 128 else 255 - v) for v in range(256)]
"""x -> 255 - x where x >= 0.5 * 255 (threshold 0.5 on [0, 1] pixels)."""

_ORDERS = list(itertools.permutations(range(4)))
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class Window(NamedTuple):
    """A view's crop window in relative (y, x) coordinates; x start/end are swapped when flipped."""

    start: object
    end: object
    flip: object


class Decisions(NamedTuple):
    """Per-sample draws of one view, as float scalars (1.0 = applied), for the debug output."""

    jitter: object
    gray: object
    blur: object
    solarize: object


def _f(node):
    return fn.cast(node, dtype=types.FLOAT)


def coin(probability: float):
    """A per-sample bool scalar that is True with `probability`."""
    return fn.random.coin_flip(probability=probability, dtype=types.BOOL)


def crop_window(shape, area: tuple[float, float], aspect: tuple[float, float], flip_p: float) -> Window:
    """One-attempt, clamped random-resized-crop window (see the module docstring) plus a flip coin.

    `shape` is the image's (H, W, C) (from `fn.peek_image_shape`)."""
    height, width = _f(shape[0]), _f(shape[1])
    fraction = fn.random.uniform(range=list(area))
    ratio = dmath.exp(fn.random.uniform(range=[math.log(aspect[0]), math.log(aspect[1])]))
    w = dmath.min(dmath.sqrt(fraction * ratio * height / width), 1.0)  # relative width
    h = dmath.min(dmath.sqrt(fraction * width / (ratio * height)), 1.0)
    offset = fn.random.uniform(range=[0.0, 1.0], shape=[2])
    y0, x0 = offset[0] * (1.0 - h), offset[1] * (1.0 - w)
    flip = coin(flip_p)
    swap = _f(flip)
    start = fn.stack(y0, x0 + swap * w)
    end = fn.stack(y0 + h, x0 + w - swap * w)
    return Window(start, end, flip)


def cut(image, window: Window, size: int, interp):
    """The `size` x `size` view of `image` inside `window` (flipped when drawn), antialiased."""
    return fn.resize(image, size=[size, size], roi_start=window.start, roi_end=window.end,
                     roi_relative=True, interp_type=interp, antialias=True)


def _affine(x, matrix, shift, mean_matrix, device: str):
    """clip(matrix @ x + shift + mean_matrix @ mean(x)) per pixel, uint8 out (rounded, clamped).

    On CPU it is one `coord_transform` pass. On GPU the image mean is a GPU tensor, which cannot be
    an operator argument, so the mean term is added after a float pass."""
    mean = fn.reshape(fn.reductions.mean(x, axes=[0, 1]), shape=[1, 3])
    if device == "cpu":
        shift = shift + fn.reductions.sum(mean_matrix * mean, axes=[1])
        return fn.coord_transform(x, M=matrix, T=shift, dtype=types.UINT8)
    moved = fn.coord_transform(x, M=matrix, T=shift, dtype=types.FLOAT)
    return fn.cast(moved + fn.coord_transform(mean, M=mean_matrix, dtype=types.FLOAT), dtype=types.UINT8)


class JitterDraws(NamedTuple):
    """A view's jitter parameters, neutral (0 shift, factors 1, angle 0) where jitter was not drawn."""

    shift: object       # additive brightness, in pixel levels
    factor: object      # multiplicative brightness
    contrast: object
    saturation: object
    angle: object       # hue rotation in radians


def draw_jitter(views: ViewsConfig, applied) -> JitterDraws:
    """Per-sample jitter parameters; `applied` (float 0/1) neutralizes them."""
    def symmetric(strength):  # applied * U(-strength, strength); a zero strength draws nothing
        if strength <= 0.0:
            return 0.0 * applied
        return applied * fn.random.uniform(range=[-strength, strength])

    additive = views.brightness_mode == "additive"
    shift = 255.0 * symmetric(views.brightness if additive else 0.0)
    factor = 1.0 + symmetric(0.0 if additive else views.brightness)
    return JitterDraws(shift, factor, 1.0 + symmetric(views.contrast), 1.0 + symmetric(views.saturation),
                       2.0 * math.pi * symmetric(views.hue))


def _chroma_matrix(saturation=None, angle=None):
    """K: chroma scaled by `saturation` and rotated by `angle` about the gray axis (luma kept);
    either may be None (1 and 0)."""
    if angle is None:
        return types.Constant(LUMA_PART) + saturation * types.Constant(CHROMA_SCALE)
    cosine, sine = dmath.cos(angle), dmath.sin(angle)
    if saturation is not None:
        cosine, sine = saturation * cosine, saturation * sine
    return (types.Constant(LUMA_PART) + cosine * types.Constant(CHROMA_SCALE)
            + sine * types.Constant(CHROMA_ROTATE))


def jitter_fused(x, d: JitterDraws, gray, device: str):
    """Jitter and grayscale as one affine pass: y = clip(b c B x + b (1 - c) B mean + shift),
    B = K (colour) or the gray matrix (grayscale drawn), b/c the brightness/contrast factors."""
    base = _chroma_matrix(d.saturation, d.angle) * (1.0 - gray) + types.Constant(GRAY_MATRIX) * gray
    scale = d.factor * d.contrast
    return _affine(x, scale * base, d.shift, d.factor * (1.0 - d.contrast) * base, device)


def draw_order(views: ViewsConfig):
    """Per-sample index into the 24 orders of the four jitter ops (None for the fixed order)."""
    return fn.random.choice(len(_ORDERS)) if views.jitter_order == "random" else None


def jitter_each(x, d: JitterDraws, order, device: str):
    """BYOL's exact jitter: four passes, one op each, in a per-sample random (or the fixed
    brightness, contrast, saturation, hue) order, clipped after each. Slot s applies op
    `order[s]`, whose matrix is picked per sample."""
    eye = types.Constant(np.eye(3, dtype=np.float32))
    matrices = [d.factor * eye, d.contrast * eye, _chroma_matrix(saturation=d.saturation),
                _chroma_matrix(angle=d.angle)]
    for slot in range(4):
        if order is None:
            pick = [1.0 if op == slot else 0.0 for op in range(4)]
        else:
            op = fn.lookup_table(order, keys=list(range(len(_ORDERS))),
                                 values=[float(o[slot]) for o in _ORDERS], dtype=types.INT32)
            pick = [_f(op == k) for k in range(4)]
        matrix = sum(p * m for p, m in zip(pick, matrices))
        x = _affine(x, matrix, pick[BRIGHTNESS] * d.shift, pick[CONTRAST] * (1.0 - d.contrast) * eye, device)
    return x


def gaussian_kernel(sigma, taps: int):
    """Normalized 1-D Gaussian weights (1, taps) for a per-sample `sigma`."""
    offsets = (np.arange(taps, dtype=np.float32) - taps // 2) ** 2
    weights = dmath.exp(types.Constant(offsets.reshape(1, taps)) * (-0.5 / (sigma * sigma)))
    return weights / fn.reductions.sum(weights)


def blur(x, sigma, taps: int, device: str):
    """Gaussian blur with BYOL's window (`taps` = 2 * int(size / 20) + 1). CPU: two 1-D passes of
    `fn.filter` (OpenCV's SIMD kernels, ~6x DALI's CPU gaussian_blur; uint8 between passes, reflect
    border). GPU: DALI's separable `fn.gaussian_blur`."""
    if device == "gpu":
        return fn.gaussian_blur(x, sigma=sigma, window_size=taps)
    row = gaussian_kernel(sigma, taps)
    return fn.filter(fn.filter(x, row), fn.reshape(row, shape=[taps, 1]))


def blur_taps(size: int) -> int:
    """BYOL's kernel: radius int(size / 20), i.e. 23 taps at 224 and 9 at 96."""
    return 2 * int(size / 20) + 1


def augment(x, views: ViewsConfig, view_index: int, size: int, device: str):
    """Jitter, grayscale, blur and solarize one view (uint8 HWC); returns (view, Decisions)."""
    blur_p, solarize_p = views.view_setting(view_index)
    jitter = _f(coin(views.jitter_p))
    gray = _f(coin(views.grayscale_p))
    draws = draw_jitter(views, jitter)
    if views.jitter_clip == "end":
        if jitter + gray > 0.0:  # the 16% drawing neither skip the pass
            x = jitter_fused(x, draws, gray, device)
    else:
        order = draw_order(views)
        if jitter > 0.0:
            x = jitter_each(x, draws, order, device)
        if gray > 0.0:
            x = fn.coord_transform(x, M=GRAY_MATRIX.flatten().tolist(), dtype=types.UINT8)
    sigma = fn.random.uniform(range=list(views.blur_sigma))
    blurred = coin(blur_p)
    if blur_p >= 1.0:
        x = blur(x, sigma, blur_taps(size), device)
    elif blur_p > 0.0:
        if blurred:
            x = blur(x, sigma, blur_taps(size), device)
    solarized = coin(solarize_p)
    if solarize_p > 0.0:
        if solarized:
            x = fn.lookup_table(x, keys=list(range(256)), values=SOLARIZE_TABLE, dtype=types.UINT8)
    return x, Decisions(jitter, gray, _f(blurred), _f(solarized))
