"""BYOL's colour jitter and grayscale, one unit: both are colour matrices, applied in one pass.

Colour jitter: brightness (TF's additive delta, or a DALI-style factor), contrast about each
channel's image mean, saturation (chroma scale: at hue 0 exactly torchvision's blend with the luma
gray image) and hue (rotation of the chroma plane about the gray axis, the linear form DALI's
`fn.hsv` uses; TF rotates in HSV space). All four are affine colour maps, so without clipping
between them they commute and compose into ONE 3x4 matrix: `jitter_clip = "end"` applies jitter
and grayscale (weights 0.2989, 0.5870, 0.1140; saturation and hue keep luma, so gray(K x) = gray(x))
in one pass, clipped once. `jitter_clip = "each"` is BYOL's exact form: four passes, one op each in a
per-sample random order (`jitter_order`), clipped after each, then grayscale. Every piece works on
uint8 HWC views; the colour maps of all views are made once per image.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, StatsColumns, StatsGroup, View
from dali_pipelines.draws import constant, drawn, flags, symmetric
from dali_pipelines.recipe import ViewsConfig

ORDERS = list(itertools.permutations(range(4)))
"""The 24 orders of the four jitter ops (brightness, contrast, saturation, hue)."""

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

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class ColourDraws(NamedTuple):
    """The unit's draws of one image: per-sample (V,) float vectors (flags 0/1) unless noted."""

    jitter: object
    gray: object
    shift: object       # additive brightness in pixel levels (0 unless jitter, additive mode)
    factor: object      # multiplicative brightness (1 unless jitter, multiplicative mode)
    contrast: object
    saturation: object
    angle: object       # hue rotation, radians
    order: object       # (V,) int32 index into ORDERS, or None (fixed order / fused jitter)


class ColourMaps(NamedTuple):
    """Per-view affine colour maps y = matrix x + shift + mean_matrix mean(x): (V,3,3), (V,3), (V,3,3)."""

    matrix: object
    shift: object
    mean_matrix: object

    def of_view(self, k: int) -> "ColourMaps":
        """View `k`'s map: (3, 3), (3,), (3, 3)."""
        return ColourMaps(self.matrix[k], self.shift[k], self.mean_matrix[k])


class ColourView(NamedTuple):
    """One view's record: its two flags and its colour map(s): one fused `ColourMaps` (jitter_clip "end")
    or a tuple of the four slots' maps (jitter_clip "each")."""

    jitter: object
    gray: object
    maps: object


def _cube(vector, views: int):
    """(V,) -> (V, 1, 1), to scale a (3, 3) matrix per view."""
    return fn.reshape(vector, shape=[views, 1, 1])


def _rows(vector, views: int):
    """(V,) -> (V, 3): the same value for the three channels."""
    return fn.reshape(vector, shape=[views, 1]) * constant(np.ones((1, 3)))


def chroma(scale_cos, scale_sin):
    """K per view: luma kept, chroma scaled/rotated (arguments (V, 1, 1): s cos t, s sin t)."""
    return constant(LUMA_PART) + scale_cos * constant(CHROMA_SCALE) + scale_sin * constant(CHROMA_ROTATE)


def fused_maps(draws: ColourDraws, views: int) -> ColourMaps:
    """Jitter + grayscale as one map per view: y = b c B x + b (1 - c) B mean + shift, with B = K
    (colour) or the gray matrix (grayscale drawn), b/c the brightness/contrast factors."""
    gray = _cube(draws.gray, views)
    colour = chroma(_cube(draws.saturation * dmath.cos(draws.angle), views),
                    _cube(draws.saturation * dmath.sin(draws.angle), views))
    base = colour * (1.0 - gray) + constant(GRAY_MATRIX) * gray
    return ColourMaps(_cube(draws.factor * draws.contrast, views) * base, _rows(draws.shift, views),
                      _cube(draws.factor * (1.0 - draws.contrast), views) * base)


def exact_maps(draws: ColourDraws, views: int) -> list[ColourMaps]:
    """BYOL's exact jitter: per slot, the map of the op that slot applies (per sample and view)."""
    eye = constant(IDENTITY)
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


def draw_colour(views: ViewsConfig) -> ColourDraws:
    """The jitter and grayscale coins of every view, and the jitter's strengths (zero where not jittered)."""
    count = views.num_views
    jitter = flags([views.jitter_p] * count)
    additive = views.brightness_mode == "additive"
    shift = 255.0 * symmetric(views.brightness if additive else 0.0, jitter, count)
    factor = 1.0 + symmetric(0.0 if additive else views.brightness, jitter, count)
    order = None
    if views.jitter_clip == "each" and views.jitter_order == "random":
        uniform = fn.random.uniform(range=[0.0, float(len(ORDERS))], shape=[count])
        order = fn.cast(dmath.floor(uniform), dtype=types.INT32)  # a cast alone would round
    return ColourDraws(jitter=jitter, gray=flags([views.grayscale_p] * count), shift=shift, factor=factor,
                       contrast=1.0 + symmetric(views.contrast, jitter, count),
                       saturation=1.0 + symmetric(views.saturation, jitter, count),
                       angle=2.0 * math.pi * symmetric(views.hue, jitter, count), order=order)


class Colour(Augmentation):
    """Colour jitter (p = `jitter_p`) then grayscale (p = `grayscale_p`), fused or BYOL's exact passes."""

    name = "colour"
    settings = ("jitter_p", "brightness", "brightness_mode", "contrast", "saturation", "hue", "jitter_order",
                "jitter_clip", "grayscale_p")
    off = {"jitter_p": 0.0, "grayscale_p": 0.0}
    ablation_group = "colour jitter + grayscale"
    ablation_advice = ("colour jitter costs most: views.jitter_order = \"fixed\" (one fused pass instead of four "
                       "in random order) if a documented approximation is acceptable")
    stats_columns = (StatsColumns(("jitter",), StatsGroup.DECISION), StatsColumns(("gray",), StatsGroup.DECISION))

    def is_on(self, views: ViewsConfig) -> bool:
        """Jittering or graying at all."""
        return views.jitter_p > 0 or views.grayscale_p > 0

    def draw(self, image: ImageInputs, views: ViewsConfig, earlier) -> ColourDraws:
        """See `draw_colour`."""
        return draw_colour(views)

    def per_view(self, draws: ColourDraws, views: ViewsConfig) -> list[ColourView]:
        """Each view's flags and colour map(s) for the jitter form in use."""
        count = views.num_views
        if views.jitter_clip == "end":
            fused = fused_maps(draws, count)
            maps = [fused.of_view(k) for k in range(count)]
        else:
            slots = exact_maps(draws, count)
            maps = [tuple(slot.of_view(k) for slot in slots) for k in range(count)]
        return [ColourView(draws.jitter[k], draws.gray[k], maps[k]) for k in range(count)]

    def apply(self, x, view: View):
        """Jitter and grayscale in one pass (`jitter_clip = "end"`), or BYOL's passes."""
        colour = view.draws[self.name]
        if view.views.jitter_clip == "end":
            if drawn(colour.jitter + colour.gray):  # the 16% drawing neither skip the pass
                x = affine(x, colour.maps, view.device)
        else:
            if drawn(colour.jitter):
                for slot in colour.maps:
                    x = affine(x, slot, view.device)
            if drawn(colour.gray):
                x = grayscale(x)
        return x

    def stats(self, draws: ColourDraws) -> tuple:
        """The jitter and grayscale flags."""
        return draws.jitter, draws.gray
