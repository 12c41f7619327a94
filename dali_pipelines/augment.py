"""The per-view BYOL augmentation as DALI graph pieces: colour jitter, grayscale, blur, solarize, crop.

Every piece works on uint8 HWC views (a quarter of float32's bytes; DALI's uint8 kernels are the
fast ones). Each view's random draws arrive as its `draws.ViewDraws`; probabilities act per sample
through DALI conditionals: `if drawn(flag):` runs the branch only for the samples that drew it, while
a Python `if` on the view's `ViewSpec` or the `ViewsConfig` decides which operators the graph holds.

Colour jitter: brightness (TF's additive delta, or a DALI-style factor), contrast about each
channel's image mean, saturation (chroma scale: at hue 0 exactly torchvision's blend with the luma
gray image) and hue (rotation of the chroma plane about the gray axis, the linear form DALI's
`fn.hsv` uses; TF rotates in HSV space). All four are affine colour maps, so without clipping
between them they commute and compose into ONE 3x4 matrix: `jitter_clip = "end"` applies jitter
and grayscale (weights 0.2989, 0.5870, 0.1140; saturation and hue keep luma, so gray(K x) = gray(x))
in one pass, clipped once. `jitter_clip = "each"` is BYOL's exact form: four passes, one op each in a
per-sample random order (`jitter_order`), clipped after each, then grayscale.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.draws import ORDERS, ImageDraws, ViewDraws, drawn
from dali_pipelines.recipe import ViewsConfig, ViewSpec

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
CHROMA_ROTATE = _yiq_basis(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]))  # + angle: HSV hue up
GRAY_MATRIX = np.tile(np.asarray(GRAY_WEIGHTS, np.float32), (3, 1))
"""Grayscale replicated to 3 channels, as a colour matrix."""
IDENTITY = np.eye(3, dtype=np.float32)

SOLARIZE_TABLE = [float(v if v < 128 else 255 - v) for v in range(256)]
"""x -> 255 - x where x >= 0.5 * 255 (threshold 0.5 on [0, 1] pixels)."""

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class ColourMaps(NamedTuple):
    """Per-view affine colour maps y = matrix x + shift + mean_matrix mean(x): (V,3,3), (V,3), (V,3,3)."""

    matrix: object
    shift: object
    mean_matrix: object

    def of_view(self, k: int) -> "ColourMaps":
        """View `k`'s map: (3, 3), (3,), (3, 3)."""
        return ColourMaps(self.matrix[k], self.shift[k], self.mean_matrix[k])


def _c(array: np.ndarray):
    return types.Constant(np.asarray(array, dtype=np.float32))


def _cube(vector, views: int):
    """(V,) -> (V, 1, 1), to scale a (3, 3) matrix per view."""
    return fn.reshape(vector, shape=[views, 1, 1])


def _rows(vector, views: int):
    """(V,) -> (V, 3): the same value for the three channels."""
    return fn.reshape(vector, shape=[views, 1]) * _c(np.ones((1, 3)))


def chroma(scale_cos, scale_sin):
    """K per view: luma kept, chroma scaled/rotated (arguments (V, 1, 1): s cos t, s sin t)."""
    return _c(LUMA_PART) + scale_cos * _c(CHROMA_SCALE) + scale_sin * _c(CHROMA_ROTATE)


def fused_maps(draws: ImageDraws, views: int) -> ColourMaps:
    """Jitter + grayscale as one map per view: y = b c B x + b (1 - c) B mean + shift, with B = K
    (colour) or the gray matrix (grayscale drawn), b/c the brightness/contrast factors."""
    gray = _cube(draws.gray, views)
    colour = chroma(_cube(draws.saturation * dmath.cos(draws.angle), views),
                    _cube(draws.saturation * dmath.sin(draws.angle), views))
    base = colour * (1.0 - gray) + _c(GRAY_MATRIX) * gray
    return ColourMaps(_cube(draws.factor * draws.contrast, views) * base, _rows(draws.shift, views),
                      _cube(draws.factor * (1.0 - draws.contrast), views) * base)


def exact_maps(draws: ImageDraws, views: int) -> list[ColourMaps]:
    """BYOL's exact jitter: per slot, the map of the op that slot applies (per sample and view)."""
    eye = _c(IDENTITY)
    matrices = [_cube(draws.factor, views) * eye, _cube(draws.contrast, views) * eye,
                chroma(_cube(draws.saturation, views), 0.0 * _cube(draws.saturation, views)),
                chroma(_cube(dmath.cos(draws.angle), views), _cube(dmath.sin(draws.angle), views))]
    slots = []
    for slot in range(4):
        if draws.order is None:
            pick = [float(op == slot) for op in range(4)]
        else:
            op = fn.lookup_table(draws.order, keys=list(range(len(ORDERS))),
                                 values=[float(o[slot]) for o in ORDERS], dtype=types.INT32)
            pick = [fn.cast(op == k, dtype=types.FLOAT) for k in range(4)]
        cubes = [p if isinstance(p, float) else _cube(p, views) for p in pick]
        matrix = sum(c * m for c, m in zip(cubes, matrices))
        shift = pick[BRIGHTNESS] * draws.shift
        mean_matrix = cubes[CONTRAST] * _cube(1.0 - draws.contrast, views) * eye
        slots.append(ColourMaps(matrix, _rows(shift, views), mean_matrix))
    return slots


def view_colour_maps(draws: ImageDraws, views: ViewsConfig) -> list:
    """Each view's colour map for the jitter form in use: one fused `ColourMaps` (jitter_clip "end"),
    or a tuple of the four slots' maps (jitter_clip "each")."""
    if views.jitter_clip == "end":
        fused = fused_maps(draws, views.num_views)
        return [fused.of_view(k) for k in range(views.num_views)]
    slots = exact_maps(draws, views.num_views)
    return [tuple(slot.of_view(k) for slot in slots) for k in range(views.num_views)]


def affine(x, maps: ColourMaps, device: str):
    """clip(M x + shift + A mean(x)) with one view's `maps`, uint8 out (rounded, clamped).

    CPU: one `coord_transform` pass. GPU: the image mean is a GPU tensor, which cannot be an
    operator argument, so its term is added after a float pass."""
    mean = fn.reshape(fn.reductions.mean(x, axes=[0, 1]), shape=[1, 3])
    if device == "cpu":
        shift = fn.coord_transform(mean, M=maps.mean_matrix, T=maps.shift, dtype=types.FLOAT)
        return fn.coord_transform(x, M=maps.matrix, T=fn.reshape(shift, shape=[3]), dtype=types.UINT8)
    moved = fn.coord_transform(x, M=maps.matrix, T=maps.shift, dtype=types.FLOAT)
    return fn.cast(moved + fn.coord_transform(mean, M=maps.mean_matrix, dtype=types.FLOAT), dtype=types.UINT8)


def grayscale(x):
    """BYOL's grayscale, replicated to three channels (uint8)."""
    return fn.coord_transform(x, M=GRAY_MATRIX.flatten().tolist(), dtype=types.UINT8)


def solarize(x):
    """x -> 255 - x on the bright half (`SOLARIZE_TABLE`)."""
    return fn.lookup_table(x, keys=list(range(256)), values=SOLARIZE_TABLE, dtype=types.UINT8)


def blur_taps(size: int) -> int:
    """BYOL's kernel: radius int(size / 20), i.e. 23 taps at 224 and 9 at 96."""
    return 2 * int(size / 20) + 1


TRUNCATE_SIGMAS = 4.0
"""The blur window is cut to +-4 sigma when that is narrower than BYOL's: the weights dropped sum to
< 6.4e-5 of the kernel, under 0.02 of a level on 0..255 pixels, and small sigmas cost 3-9 taps
instead of 23."""


def gaussian_rows(sigma, taps: int, count: int):
    """(count, taps) normalized Gaussian weights for a (count,) vector of sigmas, and the (count,)
    half-widths to keep: min(taps // 2, ceil(4 sigma))."""
    offsets = _c(((np.arange(taps) - taps // 2) ** 2).reshape(1, taps))
    weights = dmath.exp(offsets * fn.reshape(-0.5 / (sigma * sigma), shape=[count, 1]))
    half = fn.cast(dmath.min(dmath.ceil(TRUNCATE_SIGMAS * sigma), float(taps // 2)), dtype=types.INT32)
    return weights, half


def view_blur_kernels(sigma, views: ViewsConfig) -> list[tuple]:
    """Each view's (weights (1, taps), half-width) for its drawn `sigma` ((V,) vector): one
    `gaussian_rows` for the large views and one for the small views."""
    kernels = []
    for first, count, size in ((0, views.num_large, views.large_size),
                               (views.num_large, views.num_small, views.small_size)):
        if count:
            weights, half = gaussian_rows(sigma[first:first + count], blur_taps(size), count)
            kernels += [(weights[row:row + 1, :], half[row]) for row in range(count)]
    return kernels


def blur(x, draw: ViewDraws, size: int, device: str):
    """Gaussian blur at the view's sigma with BYOL's window for `size`, cut to +-4 sigma
    (`TRUNCATE_SIGMAS`). CPU: two 1-D `fn.filter` passes (OpenCV's SIMD kernels, ~6x DALI's CPU
    gaussian_blur; uint8 between the passes, reflect-101 border) with the view's kept weights. GPU:
    DALI's separable `fn.gaussian_blur`."""
    width = 2 * draw.blur_half + 1
    if device == "gpu":
        return fn.gaussian_blur(x, sigma=draw.sigma, window_size=width)
    start = fn.stack(0 * draw.blur_half, blur_taps(size) // 2 - draw.blur_half)
    kept = fn.slice(draw.blur_weights, start=start, shape=fn.stack(1 + 0 * draw.blur_half, width), axes=[0, 1])
    kept = kept / fn.reductions.sum(kept)
    return fn.filter(fn.filter(x, kept), fn.reshape(kept, shape=[-1, 1]))


def augment_view(x, spec: ViewSpec, draw: ViewDraws, views: ViewsConfig, device: str):
    """BYOL's colour jitter, grayscale, blur and solarize on one view (uint8 HWC), with its draws."""
    if views.jitter_clip == "end":
        if drawn(draw.jitter + draw.gray):  # the 16% drawing neither skip the pass
            x = affine(x, draw.colour, device)
    else:
        if drawn(draw.jitter):
            for slot in draw.colour:
                x = affine(x, slot, device)
        if drawn(draw.gray):
            x = grayscale(x)
    if spec.blur_p >= 1.0:
        x = blur(x, draw, spec.size, device)
    elif spec.blur_p > 0.0:
        if drawn(draw.blur):
            x = blur(x, draw, spec.size, device)
    if spec.solarize_p > 0.0:
        if drawn(draw.solarize):
            x = solarize(x)
    return x


def crop(image, window, size: int, interp):
    """The `size` x `size` view of `image` inside `window` (a `draws.Window`; mirrored when flipped),
    antialiased."""
    return fn.resize(image, size=[size, size], roi_start=window.start, roi_end=window.end,
                     roi_relative=True, interp_type=interp, antialias=True)
