"""BYOL's colour jitter and grayscale, one unit: both are colour matrices, applied in one pass.

Colour jitter: brightness (TF's additive delta, or a DALI-style factor), contrast about each
channel's image mean, saturation (chroma scale: exactly torchvision's blend with the luma gray image)
and hue (rotation of the chroma plane about the gray axis, the linear form DALI's `fn.hsv` uses; TF
rotates in HSV space). All four are affine colour maps, so without clipping between them they commute
and compose into ONE map per view, y = M x + A mean(x) + T: `jitter_clip = "end"` applies jitter and
grayscale (weights 0.2989, 0.5870, 0.1140; saturation and hue keep luma, so gray(K x) = gray(x): the
grayscale just zeroes the chroma) in one pass, clipped once. `jitter_clip = "each"` is BYOL's exact form
(`exact_maps`): four passes, one op each in a per-sample random order (`jitter_order`), clipped after
each, then grayscale. Every piece works on uint8 HWC views; the maps of all views are made once per image
from the unit's draw columns. The fused pass runs on every view (the identity map where neither jitter nor
grayscale was drawn): on the CPU as a step of the compiled view pass (`Colour.fused_step`, `cpu_kernels`: DALI's
CPU `coord_transform` costs ~10x more), on the GPU as `coord_transform`.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple, Sequence

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.augmentations.cpu_kernels import MAP_COLUMNS
from dali_pipelines.augmentations.unit import Augmentation, FusedStep, ImageInputs, StatsColumns, StatsGroup, View
from dali_pipelines.draws import Coin, Uniform, Uniforms, as_float, coin_can_vary, constant
from dali_pipelines.recipe import ViewsConfig

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
"""ITU-R 601 luma weights of BYOL's grayscale (tf.image.rgb_to_grayscale)."""

GRAY_MATRIX = np.tile(np.asarray(GRAY_WEIGHTS, np.float32), (3, 1))
"""Grayscale replicated to 3 channels, as a colour matrix: the luma part of every colour map."""
IDENTITY = np.eye(3, dtype=np.float32)
CHROMA_SCALE = IDENTITY - GRAY_MATRIX
"""K = GRAY_MATRIX + s cos(t) CHROMA_SCALE + s sin(t) CHROMA_ROTATE: saturation s, hue angle t (at t = 0,
torchvision's saturation: a blend of the image with its luma gray image)."""

_CHROMA_ROWS = np.array([[0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])  # YIQ's I and Q rows (sum 0)
_TO_YIQ = np.vstack([GRAY_WEIGHTS, _CHROMA_ROWS])
CHROMA_ROTATE = (np.linalg.inv(_TO_YIQ) @ np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
                 @ _TO_YIQ).astype(np.float32)
"""A quarter turn of YIQ's chroma plane, in RGB (+ angle: HSV hue up); luma is kept."""

STRENGTHS = ("brightness", "contrast", "saturation", "hue")
"""The jitter's four value columns, in this order: U(-strength, strength) each (hue as an angle)."""


class ColourMaps(NamedTuple):
    """Every view's fused map: `matrix` M (V, 3, 3) and `mean_shift` [A | T] (V, 3, 4), y = M x + A mean(x) + T."""

    matrix: object
    mean_shift: object


class ColourView(NamedTuple):
    """One view's record in the fused form (`ExactView` for the exact one): `applied`, a scalar bool (or a Python
    bool) for its conditional, its map M (3, 3) and [A | T] (3, 4)."""

    applied: object
    matrix: object
    mean_shift: object


def jitter_changes(uniforms: Uniforms, jitter):
    """(V, 4) drawn changes [brightness, 1 - contrast, saturation - 1, angle], zero where the jitter was not drawn
    (the neutral map): a change of brightness (a shift in pixel levels, or a factor - 1), of contrast (one minus
    the factor: U(-c, c) either way round), of saturation and the hue's angle."""
    changes = uniforms.block(STRENGTHS[0], 4)
    return changes if jitter is True else changes * jitter


def fused_maps(views: ViewsConfig, uniforms: Uniforms, jitter, keep) -> ColourMaps:
    """Jitter + grayscale as one map per view: y = c f B x + (1 - c) f B mean(x) + shift, with B = GRAY + keep s
    (cos t CHROMA_SCALE + sin t CHROMA_ROTATE) (keep: 0 where gray), f / c the brightness / contrast factors."""
    count = views.num_views
    changes = fn.reshape(jitter_changes(uniforms, jitter), shape=[count, 4, 1, 1, 1])
    turn = dmath.cos(changes[:, 3] - constant(np.asarray([0.0, math.pi / 2]).reshape(2, 1, 1)))  # cos t, sin t
    chroma = turn + turn * changes[:, 2]                                  # (V, 2, 1, 1): s cos t, s sin t
    if keep is not True:                                                  # zero where gray
        chroma = 0.0 * chroma if keep is False else chroma * fn.reshape(keep, shape=[count, 1, 1, 1])
    base = constant(GRAY_MATRIX) + fn.reductions.sum(chroma * constant(np.stack([CHROMA_SCALE, CHROMA_ROTATE])),
                                                     axes=[1])
    brightness = changes[:, 0, 0]                                         # (V, 1, 1)
    if views.brightness_mode == "multiplicative":
        base = base + base * brightness                                  # f B
    mean_matrix = base * changes[:, 1, 0]                                 # (1 - c) f B
    if views.brightness_mode == "additive":
        shift = brightness * constant(np.ones((1, 3, 1)))                 # 255 * delta, every channel
    else:
        shift = 0.0 * constant(np.ones((count, 3, 1)))
    return ColourMaps(base - mean_matrix, fn.cat(mean_matrix, shift, axis=2))


def packed_maps(maps: ColourMaps, views: int):
    """(V, 21) every view's map as a row of the CPU's view pass: [M | A | T] row by row (`cpu_kernels.STEPS`)."""
    return fn.reshape(fn.cat(maps.matrix, maps.mean_shift, axis=2), shape=[views, 3 * MAP_COLUMNS])


def fused_pass(x, view: ColourView, device: str):
    """clip(M x + A mean(x) + T) with the view's map, uint8 out (rounded, clamped): CPU, the mean term folded
    into the pass's translation; GPU, added after a float pass (a GPU tensor cannot be an operator argument)."""
    mean = fn.reductions.mean(x, axes=[0, 1], keep_dims=True)                       # (1, 1, 3)
    if device == "cpu":
        shift = fn.coord_transform(mean, MT=view.mean_shift)[0, 0]                   # A mean + T, (3,)
        return fn.coord_transform(x, M=view.matrix, T=shift, dtype=types.UINT8)
    moved = fn.coord_transform(x, M=view.matrix, dtype=types.FLOAT)
    return fn.cast(moved + fn.coord_transform(mean, MT=view.mean_shift), dtype=types.UINT8)


ORDERS = list(itertools.permutations(range(4)))
"""The 24 orders of the four jitter ops (brightness, contrast, saturation, hue)."""

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class ExactView(NamedTuple):
    """One view's record in BYOL's exact form: its jitter and colour-kept decisions (scalar bools or Python
    bools) and the four slots' maps, each (M (3, 3), [A | T] (3, 4))."""

    jitter: object
    keep: object
    slots: tuple


def exact_maps(views: ViewsConfig, uniforms: Uniforms, jitter) -> list[ColourMaps]:
    """BYOL's exact jitter: per slot, the map of the op that slot applies (per sample and view)."""
    count = views.num_views
    changes = jitter_changes(uniforms, jitter)
    cube = [fn.reshape(changes[:, op], shape=[count, 1, 1]) for op in range(4)]      # (V, 1, 1) each
    additive = views.brightness_mode == "additive"
    eye, gray = constant(IDENTITY), constant(GRAY_MATRIX)
    matrices = [eye if additive else (1.0 + cube[BRIGHTNESS]) * eye, (1.0 - cube[CONTRAST]) * eye,
                gray + (1.0 + cube[SATURATION]) * constant(CHROMA_SCALE),
                gray + dmath.cos(cube[HUE]) * constant(CHROMA_SCALE) + dmath.sin(cube[HUE]) * constant(CHROMA_ROTATE)]
    shift = (cube[BRIGHTNESS] if additive else 0.0 * cube[BRIGHTNESS]) * constant(np.ones((1, 3, 1)))
    mean_matrix = cube[CONTRAST] * eye                                                  # (1 - c) I
    order = None
    if views.jitter_order == "random":
        order = fn.cast(dmath.floor(uniforms.value("order")[:, 0]), dtype=types.INT32)  # a cast alone would round
    slots = []
    for slot in range(4):
        if order is None:
            pick = [float(op == slot) for op in range(4)]
        else:
            op = fn.lookup_table(order, keys=list(range(len(ORDERS))), values=[float(o[slot]) for o in ORDERS],
                                 dtype=types.INT32)
            pick = [fn.reshape(fn.cast(op == k, dtype=types.FLOAT), shape=[count, 1, 1]) for k in range(4)]
        matrix = sum(p * m for p, m in zip(pick, matrices))
        slots.append(ColourMaps(matrix, fn.cat(pick[CONTRAST] * mean_matrix, pick[BRIGHTNESS] * shift, axis=2)))
    return slots


def exact_views(draws: dict, views: ViewsConfig) -> list[ExactView]:
    """Each view's decisions and its four slots' maps."""
    def of_view(coin, k):
        return coin if isinstance(coin, bool) else coin[k, 0]
    return [ExactView(of_view(draws["jitter"], k), of_view(draws["keep"], k),
                      tuple(ColourView(True, slot.matrix[k], slot.mean_shift[k]) for slot in draws["maps"]))
            for k in range(views.num_views)]


def exact_passes(x, view: ExactView, device: str):
    """BYOL's exact passes: where jittered, the four slots, each clipped; then grayscale where drawn."""
    if view.jitter is True:
        for slot in view.slots:
            x = fused_pass(x, slot, device)
    elif view.jitter is not False:
        if view.jitter:
            for slot in view.slots:
                x = fused_pass(x, slot, device)
    if view.keep is False:
        x = grayscale(x)
    elif view.keep is not True:
        if view.keep:
            pass
        else:
            x = grayscale(x)
    return x


def grayscale(x):
    """BYOL's grayscale, replicated to three channels (uint8)."""
    return fn.coord_transform(x, M=GRAY_MATRIX.flatten().tolist(), dtype=types.UINT8)


def coin_of(uniforms: Uniforms | None, name: str, probability: float):
    """(V, 1) bool coins `name`, or the Python bool a probability of 0 or 1 makes them."""
    return uniforms.coin(name) if coin_can_vary(probability) else probability >= 1.0


def recoloured(jitter, keep):
    """Where the view changes colour: jitter drawn, or colour not kept (grayscale), for coins that may be
    Python bools (no operator where one decides)."""
    if jitter is True or keep is False:
        return True
    if jitter is False and keep is True:
        return False
    return keep <= jitter   # booleans: true unless kept without jitter

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

    def columns(self, views: ViewsConfig) -> tuple:
        """The jitter coins and the colour-kept coins (not grayscale), where they can vary, and when jittering
        the four changes (and BYOL's random order of the exact form)."""
        count = views.num_views
        columns = [Coin(name, (p,) * count) for name, p in (("jitter", views.jitter_p), ("keep", 1 - views.grayscale_p))
                   if coin_can_vary(p)]
        if views.jitter_p > 0:
            brightness = views.brightness * (255.0 if views.brightness_mode == "additive" else 1.0)
            limits = (brightness, views.contrast, views.saturation, 2.0 * math.pi * views.hue)
            columns += [Uniform(name, (-limit,) * count, (limit,) * count) for name, limit in zip(STRENGTHS, limits)]
            if views.jitter_clip == "each" and views.jitter_order == "random":
                columns.append(Uniform("order", (0.0,) * count, (float(len(ORDERS)),) * count))
        return tuple(columns)

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: Uniforms | None, earlier) -> dict:
        """The coins (Python bools where fixed) and, when jittering, every view's map(s)."""
        jitter = coin_of(uniforms, "jitter", views.jitter_p)
        keep = coin_of(uniforms, "keep", 1 - views.grayscale_p)
        maps = None
        if views.jitter_p > 0 and views.jitter_clip == "end":
            maps = fused_maps(views, uniforms, jitter, keep)
        elif views.jitter_p > 0:
            maps = exact_maps(views, uniforms, jitter)
        return {"jitter": jitter, "keep": keep, "maps": maps}

    def per_view(self, draws: dict, views: ViewsConfig) -> list:
        """Each view's decision(s) and map(s), sliced once."""
        if views.jitter_clip == "each" and draws["maps"] is not None:
            return exact_views(draws, views)
        applied, maps = recoloured(draws["jitter"], draws["keep"]), draws["maps"]
        return [ColourView(applied if isinstance(applied, bool) else applied[k, 0],
                           None if maps is None else maps.matrix[k], None if maps is None else maps.mean_shift[k])
                for k in range(views.num_views)]

    def apply(self, x, view: View):
        """One view's pass where jitter or grayscale was drawn: the fused map on every view where jitter is drawn
        at all (the identity where neither was), grayscale alone in a conditional where jitter never is, or
        BYOL's exact passes."""
        record = view.draws[self.name]
        if isinstance(record, ExactView):
            return exact_passes(x, record, view.device)
        if record.applied is False:
            return x
        if record.matrix is not None:
            return fused_pass(x, record, view.device)
        if record.applied is True:
            return grayscale(x)
        if record.applied:  # per sample: grayscale where drawn
            x = grayscale(x)
        return x

    def fused_step(self, draws: dict, views: Sequence[View]) -> FusedStep | None:
        """On the CPU, every view's fused map as a step of the view pass (the identity map where neither jitter nor
        grayscale was drawn); none for BYOL's exact passes, nor without jitter (grayscale alone, in a conditional)."""
        if draws["maps"] is None or views[0].views.jitter_clip != "end":
            return None
        every = frozenset(range(len(views)))
        return FusedStep("colour", packed_maps(draws["maps"], len(views)), 3 * MAP_COLUMNS, every)

    def stats(self, draws: dict, views: ViewsConfig) -> tuple:
        """The jitter and grayscale decisions."""
        keep = draws["keep"]
        gray = (not keep) if isinstance(keep, bool) else 1.0 - keep
        return as_float(draws["jitter"], views.num_views), as_float(gray, views.num_views)
