"""The CPU's fused colour pass as one compiled kernel: y = clip(round(M x + A mean(x) + T)) per view, up to
`VIEWS_PER_OPERATOR` views per operator (numba, through DALI's `NumbaFunction`).

Why not DALI's own operators: on the CPU, `fn.coord_transform` with a per-sample matrix (and `fn.color_twist`,
`fn.hsv`) runs a scalar loop that rounds every value through a libm call, ~1.1 CPU-ms for a 224 px view; this
kernel costs ~0.1 (docs/performance.md). It also takes the view's channel means itself, so a view's pass is
part of one operator instead of a mean, a map of the mean, a slice and the pass, plus the slices of its map.
The GPU keeps `fn.coord_transform` (its pixel work is not the pipeline's limit).

Compiling costs a few seconds, once per process: `colour_operator` makes the DALI operator once, and every
pipeline built after it reuses the compiled kernel. numba is imported only when a CPU pipeline colours views.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
from nvidia.dali import fn, types

VIEWS_PER_OPERATOR = 5
"""Views coloured by one operator: DALI's numba operator takes at most 6 inputs, the views and their maps."""

MAP_COLUMNS = 7
"""A view's packed map, (3, 7): [M | A | T], y = M x + A mean(x) + T (`colour.fused_maps`)."""


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


def _setup(outs, ins):
    """Each output view has its input's shape."""
    for k in range(len(outs)):
        for sample in range(len(outs[k])):
            for d in range(3):
                outs[k][sample][d] = ins[k][sample][d]


@functools.cache
def colour_operator():
    """The DALI operator of the kernel, compiled once per process (numba imported here, not at import time)."""
    from numba import njit
    from nvidia.dali.plugin.numba import NumbaFunction

    kernel = njit(nogil=True)(_colour_view)

    def run(out0, out1, out2, out3, out4, x0, x1, x2, x3, x4, packed):
        """One sample: the first `len(packed)` views (the rest are 1 x 1 padding)."""
        count = packed.shape[0]
        kernel(out0, x0, packed[0])
        if count > 1:
            kernel(out1, x1, packed[1])
        if count > 2:
            kernel(out2, x2, packed[2])
        if count > 3:
            kernel(out3, x3, packed[3])
        if count > 4:
            kernel(out4, x4, packed[4])

    return NumbaFunction(run_fn=run, setup_fn=_setup, device="cpu",
                         out_types=[types.UINT8] * VIEWS_PER_OPERATOR, outs_ndim=[3] * VIEWS_PER_OPERATOR,
                         in_types=[types.UINT8] * VIEWS_PER_OPERATOR + [types.FLOAT],
                         ins_ndim=[3] * VIEWS_PER_OPERATOR + [3])


def colour_views(views: Sequence, packed) -> list:
    """`views` (uint8 HWC, at most `VIEWS_PER_OPERATOR`) through their maps `packed` ((len(views), 3, 7) float per
    sample: `MAP_COLUMNS`), by one operator (and a reshape per view that names its layout, metadata only)."""
    if not 0 < len(views) <= VIEWS_PER_OPERATOR:
        raise ValueError(f"one colour operator takes 1 to {VIEWS_PER_OPERATOR} views, got {len(views)}")
    padding = [types.Constant(np.zeros((1, 1, 3), np.uint8), layout="HWC")] * (VIEWS_PER_OPERATOR - len(views))
    outputs = colour_operator()(*views, *padding, packed)
    return [fn.reshape(view, layout="HWC") for view in outputs[:len(views)]]  # the operator sets no layout
