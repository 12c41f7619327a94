"""Compiled CPU kernels (numba, run by DALI's `NumbaFunction`) for the passes that DALI's own CPU operators make
slow or many: a view's pixel work after its crop, in one pass, and the crop's halving of large photos. The GPU graph
uses neither (its pixel work is not the pipeline's limit): it keeps DALI's operators and never halves.

- `view_pass`: a view's steps after the crop (`STEPS`: the saliency blend, the fused colour map, the small views'
  blur, the solarization) in one pass over its pixels, up to `VIEWS_PER_OPERATOR` views per operator. Each unit
  of the view recipe hands its own parameters for all of an image's views (`unit.FusedStep`); a per-operator
  `plan` says which steps each view takes and where their parameters sit. Every step ends in uint8, rounded and
  clamped, as DALI's operator for it does. Why: DALI's CPU `fn.coord_transform` with a per-sample matrix (and
  `fn.color_twist`, `fn.hsv`) runs a scalar loop that rounds every value through a libm call, ~1.1 CPU-ms for a
  224 px view against the kernel's ~0.1; and at small views the host cost is the operators themselves (a
  conditional's splits and merge, a filter pass, a lookup table: each a few µs per image whatever its size), so
  one operator doing a view's whole pass replaces ~15 (docs/performance.md, the host-cost section).
- `halved`: each pixel the rounded mean of a 2x2 block, in one pass (DALI's way, a 2x2 `fn.filter` then a
  nearest-neighbour pick of the odd rows and columns, reads and writes the photo twice).

Compiling costs a few seconds once per process: each operator is made once (`compiled`) and every pipeline built
after it reuses it; numba is imported only then. Where numba is not installed (`available`: a checkout run from
PYTHONPATH, such as a GPU machine without network), the CPU graph uses DALI's own operators instead: slower, and
within a level of the kernels.
"""

from __future__ import annotations

import functools
import importlib
from typing import Sequence

import numpy as np
from nvidia.dali import fn, types

VIEWS_PER_OPERATOR = 2
"""Views per `view_pass` operator: DALI's numba operator takes at most 6 inputs: two views, their two blend
weights, the image's parameters and the operator's plan."""

STEPS = ("blend", "colour", "blur", "solarize")
"""The steps of `view_pass`, in the order it runs them (a view's path: background, then BYOL's colour, blur and
solarize). A view's parameters for each (`unit.FusedStep.block`, one row per view):
blend: [drawn, fill red, green, blue] (the fill on 0..255; the weights are an input image, 0..255);
colour: [M | A | T] row by row, 21 values, y = M x + A mean(x) + T (`colour.fused_maps`);
blur: [h, w_0 .. w_2h] the half-width and the normalized weights of both 1-D passes (h = 0: none);
solarize: [drawn]."""

PLAN_COLUMNS = 1 + 2 * len(STEPS)
"""A view's row in an operator's plan: [its row in the parameters, then per step: on (0 / 1), first column]."""

MAP_COLUMNS = 7
"""A view's colour map as a (3, 7) matrix: [M | A | T] (`colour.packed_maps`; 21 values in a parameter row)."""

BOX_2X2 = np.full((2, 2), 0.25, np.float32)
"""The 2x2 mean of `halved`'s fallback: centred by `fn.filter` on the pixel's lower-right corner, so the odd rows
and columns of its output are the means of the 2x2 blocks."""


@functools.cache
def available() -> bool:
    """Whether numba imports here, so that the CPU graph can use the kernels (asked once per process, when a CPU
    pipeline is first built)."""
    try:
        importlib.import_module("numba")
    except ImportError:
        return False
    return True


def _view(out, x, alpha, params, plan):
    """One view's pass, on `out`: its steps in `STEPS` order where its `plan` row turns them on, each ending in
    uint8 rounded half up and clamped, over the pixels as flat arrays (contiguous loops that LLVM vectorizes; one
    function: numba compiles it whole). Blend: fill + (x - fill) a / 255 (`saliency.blend`). Colour: the fused map,
    the channel means taken exactly (integer sums), in float32 as `fn.coord_transform` computes it. Blur: two 1-D
    passes, along the rows then the columns, uint8 between them, reflect-101 border (`blur.blur`'s `fn.filter`
    passes). Solarize: x -> 255 - x from 128 up (`solarize.SOLARIZE_TABLE`)."""
    height, width, _ = x.shape
    pixels = height * width
    flat = out.reshape(-1)
    source = x.reshape(-1)
    row = params[int(plan[0])]
    first = int(plan[2])
    if plan[1] > 0.5 and row[first] > 0.5:
        weights = alpha.reshape(-1)
        fill = row[first + 1:first + 4]
        for p in range(pixels):
            weight = np.float32(weights[p]) * np.float32(1.0 / 255.0)
            for c in range(3):
                value = np.floor(fill[c] + (np.float32(source[3 * p + c]) - fill[c]) * weight + np.float32(0.5))
                flat[3 * p + c] = np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))
    else:
        for i in range(3 * pixels):
            flat[i] = source[i]
    if plan[3] > 0.5:
        first = int(plan[4])
        sums = np.zeros(3, np.int64)
        for p in range(pixels):
            for c in range(3):
                sums[c] += flat[3 * p + c]
        means = sums / max(pixels, 1)
        m = row[first:first + 21]
        shift = np.empty(3, np.float32)
        for c in range(3):
            shift[c] = np.float32(m[7 * c + 3] * means[0] + m[7 * c + 4] * means[1] + m[7 * c + 5] * means[2]
                                  + m[7 * c + 6]) + np.float32(0.5)
        for p in range(pixels):
            red, green, blue = np.float32(flat[3 * p]), np.float32(flat[3 * p + 1]), np.float32(flat[3 * p + 2])
            for c in range(3):
                value = m[7 * c] * red + m[7 * c + 1] * green + m[7 * c + 2] * blue + shift[c]
                flat[3 * p + c] = np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))
    half = int(row[int(plan[6])]) if plan[5] > 0.5 else 0
    if half > 0:
        taps = 2 * half + 1
        weights = row[int(plan[6]) + 1:int(plan[6]) + 1 + taps]
        line = 3 * width
        across = np.empty(width + 2 * half, np.int64)    # the source column / row of each padded position:
        down = np.empty(height + 2 * half, np.int64)     # reflect-101 (-1 -> 1, size -> size - 2)
        for table, size in ((across, width), (down, height)):
            for k in range(size + 2 * half):
                at = k - half
                while size > 1 and (at < 0 or at >= size):
                    at = -at if at < 0 else 2 * size - 2 - at
                table[k] = 0 if size == 1 else at
        rows = np.empty(3 * pixels, np.uint8)
        padded = np.empty(3 * (width + 2 * half), np.float32)
        total = np.empty(line, np.float32)
        for i in range(height):                       # along each row: the row padded, then one sweep per tap
            for k in range(width + 2 * half):
                for c in range(3):
                    padded[3 * k + c] = np.float32(flat[i * line + 3 * across[k] + c])
            total[:] = 0.0
            for t in range(taps):
                weight = weights[t]
                for m in range(line):
                    total[m] += weight * padded[3 * t + m]
            for m in range(line):
                rows[i * line + m] = np.uint8(min(max(np.floor(total[m] + np.float32(0.5)), np.float32(0.0)),
                                                  np.float32(255.0)))
        for i in range(height):                       # along each column: whole rows, one sweep per tap
            total[:] = 0.0
            for t in range(taps):
                weight = weights[t]
                at = down[i + t]
                for m in range(line):
                    total[m] += weight * np.float32(rows[at * line + m])
            for m in range(line):
                flat[i * line + m] = np.uint8(min(max(np.floor(total[m] + np.float32(0.5)), np.float32(0.0)),
                                                  np.float32(255.0)))
    if plan[7] > 0.5 and row[int(plan[8])] > 0.5:
        for i in range(3 * pixels):
            if flat[i] >= 128:
                flat[i] = 255 - flat[i]


def _same_shapes(outs, ins):
    """Each output has its input's (H, W, C)."""
    for k in range(len(outs)):
        for sample in range(len(outs[k])):
            for d in range(3):
                outs[k][sample][d] = ins[k][sample][d]


def _halve(out, x):
    """Each pixel of `out` the mean of a 2x2 block of `x`, rounded half up (an odd last row or column unused)."""
    height, width, channels = out.shape
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                total = (np.int32(x[2 * i, 2 * j, c]) + np.int32(x[2 * i, 2 * j + 1, c])
                         + np.int32(x[2 * i + 1, 2 * j, c]) + np.int32(x[2 * i + 1, 2 * j + 1, c]))
                out[i, j, c] = np.uint8((total + 2) >> 2)


def _half_shapes(outs, ins):
    """Each output (H // 2, W // 2, C) of its input (H, W, C)."""
    for sample in range(len(outs[0])):
        outs[0][sample][0] = ins[0][sample][0] // 2
        outs[0][sample][1] = ins[0][sample][1] // 2
        outs[0][sample][2] = ins[0][sample][2]


def jitted(kernel):
    """`kernel` compiled by numba, its machine code cached on disk where a cache folder is writable (~1 s of a
    process's start); compiled afresh where none is."""
    from numba import njit

    try:
        return njit(nogil=True, cache=True)(kernel)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return njit(nogil=True)(kernel)


@functools.cache
def compiled(kind: str):
    """The DALI operator of kernel `kind` ("colour" or "halve"), compiled once per process."""
    from nvidia.dali.plugin.numba import NumbaFunction

    if kind == "halve":
        halve = jitted(_halve)

        def run_halve(out, x):
            halve(out, x)

        return NumbaFunction(run_fn=run_halve, setup_fn=_half_shapes, device="cpu", out_types=[types.UINT8],
                             outs_ndim=[3], in_types=[types.UINT8], ins_ndim=[3])
    if kind != "views":
        raise ValueError(f"no CPU kernel named {kind!r}: views or halve")
    view = jitted(_view)

    def run_views(out0, out1, x0, x1, alpha0, alpha1, params, plan):
        """One sample: its first `len(plan)` views (the rest are 1 x 1 padding)."""
        view(out0, x0, alpha0, params, plan[0])
        if plan.shape[0] > 1:
            view(out1, x1, alpha1, params, plan[1])

    return NumbaFunction(run_fn=run_views, setup_fn=_same_shapes, device="cpu",
                         out_types=[types.UINT8] * VIEWS_PER_OPERATOR, outs_ndim=[3] * VIEWS_PER_OPERATOR,
                         in_types=[types.UINT8] * (2 * VIEWS_PER_OPERATOR) + [types.FLOAT, types.FLOAT],
                         ins_ndim=[3] * (2 * VIEWS_PER_OPERATOR) + [2, 2])


def images(node):
    """A kernel's output as an HWC image (the operator sets no layout: a reshape that changes metadata only)."""
    return fn.reshape(node, layout="HWC")


PADDING = np.zeros((1, 1, 3), np.uint8)
"""A 1 x 1 image: the input of an operator's unused view slot, and a view's blend weights where it takes none."""


def view_pass(views: Sequence, weights: Sequence, params, plan: np.ndarray) -> list:
    """`views` (uint8 HWC, at most `VIEWS_PER_OPERATOR`) through their steps by one operator: `weights[k]` view k's
    blend weights (uint8 (H, W, 1), or `PADDING` where it blends nowhere), `params` the image's (V, n) float
    parameters (`STEPS`), `plan` ((len(views), `PLAN_COLUMNS`), fixed when the graph is built) each view's row in
    them and its steps."""
    if not 0 < len(views) <= VIEWS_PER_OPERATOR or len(weights) != len(views) or len(plan) != len(views):
        raise ValueError(f"one view pass takes 1 to {VIEWS_PER_OPERATOR} views, each with its weights and plan row; "
                         f"got {len(views)} views, {len(weights)} weights, {len(plan)} plan rows")
    padding = [types.Constant(PADDING, layout="HWC")] * (VIEWS_PER_OPERATOR - len(views))
    outputs = compiled("views")(*views, *padding, *weights, *padding, params,
                                types.Constant(np.asarray(plan, np.float32)))
    return [images(view) for view in outputs[:len(views)]]


def halved(image, shape):
    """`image` (uint8 HWC, of `shape` (H, W, C)) at half its size, each pixel the mean of a 2x2 block (an odd last
    row or column dropped): the kernel, or without numba a 2x2 `fn.filter` whose odd rows and columns a
    nearest-neighbour resize to exactly half picks (DALI 2.4's strided subscript `x[1::2, 1::2]` returned wrong
    rows past the 15th of a 240 px image)."""
    if available():
        return images(compiled("halve")(image))
    half = fn.cast(shape[0:2] // 2, dtype=types.FLOAT)
    return fn.resize(fn.filter(image, types.Constant(BOX_2X2)), size=half, interp_type=types.INTERP_NN,
                     antialias=False)
