"""Gaussian blur with probability `blur_p` per view setting (view k uses entry k mod len), sigma ~ U(`blur_sigma`).

BYOL's kernel: radius int(size / 20), i.e. 23 taps at 224 and 9 at 96, cut to +-4 sigma where that is
narrower (`TRUNCATE_SIGMAS`). CPU: two 1-D `fn.filter` passes with the view's weights, made once per
image for all large views and once for all small views (`view_blur_kernels`); GPU: DALI's separable
`fn.gaussian_blur`. A view whose probability is 1 is blurred without a conditional, 0 holds no blur.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, StatsColumns, StatsGroup, View
from dali_pipelines.draws import constant, drawn, flags
from dali_pipelines.recipe import ViewsConfig, view_entry

TRUNCATE_SIGMAS = 4.0
"""The blur window is cut to +-4 sigma when that is narrower than BYOL's: the weights dropped sum to
< 6.4e-5 of the kernel, under 0.02 of a level on 0..255 pixels, and small sigmas cost 3-9 taps
instead of 23."""


class BlurDraws(NamedTuple):
    """The unit's draws of one image: (V,) 0/1 flags and (V,) sigmas in pixels (drawn for every view)."""

    blur: object
    sigma: object


class BlurView(NamedTuple):
    """One view's record: its flag, its sigma, and its kernel (`view_blur_kernels`)."""

    blur: object
    sigma: object
    weights: object     # (1, taps) Gaussian weights at `sigma` (the CPU blur's filter)
    half: object        # half-width of the blur window actually used


def blur_taps(size: int) -> int:
    """BYOL's kernel: radius int(size / 20), i.e. 23 taps at 224 and 9 at 96."""
    return 2 * int(size / 20) + 1


def gaussian_rows(sigma, taps: int, count: int):
    """(count, taps) normalized Gaussian weights for a (count,) vector of sigmas, and the (count,)
    half-widths to keep: min(taps // 2, ceil(4 sigma))."""
    offsets = constant(((np.arange(taps) - taps // 2) ** 2).reshape(1, taps))
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


def blur(x, view: BlurView, size: int, device: str):
    """Gaussian blur at the view's sigma with BYOL's window for `size`, cut to +-4 sigma
    (`TRUNCATE_SIGMAS`). CPU: two 1-D `fn.filter` passes (OpenCV's SIMD kernels, ~6x DALI's CPU
    gaussian_blur; uint8 between the passes, reflect-101 border) with the view's kept weights. GPU:
    DALI's separable `fn.gaussian_blur`."""
    width = 2 * view.half + 1
    if device == "gpu":
        return fn.gaussian_blur(x, sigma=view.sigma, window_size=width)
    start = fn.stack(0 * view.half, blur_taps(size) // 2 - view.half)
    kept = fn.slice(view.weights, start=start, shape=fn.stack(1 + 0 * view.half, width), axes=[0, 1])
    kept = kept / fn.reductions.sum(kept)
    return fn.filter(fn.filter(x, kept), fn.reshape(kept, shape=[-1, 1]))


class Blur(Augmentation):
    """The blur's coins and sigmas, its kernels, and the blur of a view."""

    name = "blur"
    settings = ("blur_p", "blur_sigma")
    off = {"blur_p": (0.0,)}
    ablation_group = "gaussian blur"
    ablation_advice = ("blur costs most: its taps grow with the view size (int(size / 20)); it runs on every view "
                       "whose blur_p is 1.0, so check views.blur_p")
    stats_columns = (StatsColumns(("blur",), StatsGroup.DECISION), StatsColumns(("sigma",), StatsGroup.PARAMETER))

    def is_on(self, views: ViewsConfig) -> bool:
        """Blurring any view."""
        return any(p > 0 for p in views.blur_p)

    def draw(self, image: ImageInputs, views: ViewsConfig, earlier) -> BlurDraws:
        """Each view's coin (its own probability) and a sigma for every view."""
        count = views.num_views
        blur_flags = flags([view_entry(views.blur_p, k) for k in range(count)])
        sigma = views.blur_sigma[0] + fn.random.uniform(range=[0.0, 1.0], shape=[count]) \
            * (views.blur_sigma[1] - views.blur_sigma[0])
        return BlurDraws(blur_flags, sigma)

    def per_view(self, draws: BlurDraws, views: ViewsConfig) -> list[BlurView]:
        """Each view's flag, sigma and kernel."""
        kernels = view_blur_kernels(draws.sigma, views)
        return [BlurView(draws.blur[k], draws.sigma[k], *kernels[k]) for k in range(views.num_views)]

    def apply(self, x, view: View):
        """The blur where drawn: always at probability 1, never at 0 (no operator)."""
        probability = view_entry(view.views.blur_p, view.spec.index)
        record = view.draws[self.name]
        if probability >= 1.0:
            x = blur(x, record, view.spec.size, view.device)
        elif probability > 0.0:
            if drawn(record.blur):
                x = blur(x, record, view.spec.size, view.device)
        return x

    def stats(self, draws: BlurDraws) -> tuple:
        """The flags and the sigmas."""
        return draws.blur, draws.sigma
