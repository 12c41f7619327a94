"""Compiled CPU kernels (numba, run by DALI's `NumbaFunction`) for the two passes that DALI's own CPU operators
make slow: the fused colour map of the views and the crop's halving of large photos. The GPU graph uses neither
(its pixel work is not the pipeline's limit): it keeps `fn.coord_transform` and never halves.

- `colour_views`: y = clip(round(M x + A mean(x) + T)) per view, up to `VIEWS_PER_OPERATOR` views per operator, the
  channel means taken inside. DALI's CPU `fn.coord_transform` with a per-sample matrix (and `fn.color_twist`,
  `fn.hsv`) runs a scalar loop that rounds every value through a libm call: ~1.1 CPU-ms for a 224 px view, the
  kernel ~0.1; and a view's pass is part of one operator instead of a mean, a map of the mean, a slice and the pass.
- `halved`: each pixel the rounded mean of a 2x2 block, in one pass (DALI's way, a 2x2 `fn.filter` then a
  nearest-neighbour pick of the odd rows and columns, reads and writes the photo twice).

Measured in docs/performance.md (the host-cost section). Compiling costs a few seconds once per process: each
operator is made once (`compiled`) and every pipeline built after it reuses it; numba is imported only then.
Where numba is not installed (`available`: a checkout run from PYTHONPATH, such as a GPU machine without network),
the CPU graph uses DALI's own operators for both passes instead: slower, and within a level of the kernels.
"""

from __future__ import annotations

import functools
import importlib
from typing import Sequence

import numpy as np
from nvidia.dali import fn, types

VIEWS_PER_OPERATOR = 5
"""Views coloured by one operator: DALI's numba operator takes at most 6 inputs, the views and their maps."""

MAP_COLUMNS = 7
"""A view's packed map, (3, 7): [M | A | T], y = M x + A mean(x) + T (`colour.fused_maps`)."""

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


def _colour_view(out, x, packed):
    """One view: its channel means (exact: integer sums), then every pixel through its map, rounded half up
    and clamped to 0..255 (`fn.coord_transform`'s uint8 output, computed in float32 as it does)."""
    height, width, _ = x.shape
    sums = np.zeros(3, np.int64)
    for i in range(height):
        for j in range(width):
            for c in range(3):
                sums[c] += x[i, j, c]
    count = max(height * width, 1)
    means = sums / count
    shift = np.empty(3, np.float32)
    for c in range(3):
        shift[c] = np.float32(packed[c, 3] * means[0] + packed[c, 4] * means[1] + packed[c, 5] * means[2]
                              + packed[c, 6]) + np.float32(0.5)
    for i in range(height):
        for j in range(width):
            red, green, blue = np.float32(x[i, j, 0]), np.float32(x[i, j, 1]), np.float32(x[i, j, 2])
            for c in range(3):
                value = packed[c, 0] * red + packed[c, 1] * green + packed[c, 2] * blue + shift[c]
                out[i, j, c] = np.uint8(min(max(value, np.float32(0.0)), np.float32(255.0)))


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
    if kind != "colour":
        raise ValueError(f"no CPU kernel named {kind!r}: colour or halve")
    colour = jitted(_colour_view)

    def run_colour(out0, out1, out2, out3, out4, x0, x1, x2, x3, x4, packed):
        """One sample: the first `len(packed)` views (the rest are 1 x 1 padding)."""
        count = packed.shape[0]
        colour(out0, x0, packed[0])
        if count > 1:
            colour(out1, x1, packed[1])
        if count > 2:
            colour(out2, x2, packed[2])
        if count > 3:
            colour(out3, x3, packed[3])
        if count > 4:
            colour(out4, x4, packed[4])

    return NumbaFunction(run_fn=run_colour, setup_fn=_same_shapes, device="cpu",
                         out_types=[types.UINT8] * VIEWS_PER_OPERATOR, outs_ndim=[3] * VIEWS_PER_OPERATOR,
                         in_types=[types.UINT8] * VIEWS_PER_OPERATOR + [types.FLOAT],
                         ins_ndim=[3] * VIEWS_PER_OPERATOR + [3])


def images(node):
    """A kernel's output as an HWC image (the operator sets no layout: a reshape that changes metadata only)."""
    return fn.reshape(node, layout="HWC")


def colour_views(views: Sequence, packed) -> list:
    """`views` (uint8 HWC, at most `VIEWS_PER_OPERATOR`) through their maps `packed` ((len(views), 3, 7) float per
    sample: `MAP_COLUMNS`), by one operator."""
    if not 0 < len(views) <= VIEWS_PER_OPERATOR:
        raise ValueError(f"one colour operator takes 1 to {VIEWS_PER_OPERATOR} views, got {len(views)}")
    padding = [types.Constant(np.zeros((1, 1, 3), np.uint8), layout="HWC")] * (VIEWS_PER_OPERATOR - len(views))
    outputs = compiled("colour")(*views, *padding, packed)
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
