"""Gaussian blur with probability `blur_p` per view setting (view k uses entry k mod len), sigma ~ U(`blur_sigma`).

BYOL's kernel: radius int(size / 20), i.e. 23 taps at 224 and 9 at 96, cut to +-4 sigma where that is narrower
(`TRUNCATE_SIGMAS`); below 20 px it is one tap, the identity, and such a view holds no blur operator (its coin is
still drawn and reported). CPU: two 1-D `fn.filter` passes with the view's weights, every view's kernel made at once
per image (`blur_kernels`) and sliced once per view; a view of a varying probability blurs inside a conditional from
`BRANCH_FROM_SIZE` up, below it every such view is filtered, with a one-tap kernel where the blur was not drawn:
below `BRANCH_FROM_SIZE` as a step of the compiled view pass (`Blur.fused_step`, the same two passes) where numba is
installed. GPU: DALI's separable `fn.gaussian_blur`, every view blurred, with a one-tap window where the blur was
not drawn. A view whose probability is 1 is blurred without a conditional, 0 holds no blur.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.augmentations.unit import (Augmentation, FusedStep, ImageInputs, StatsColumns, StatsGroup,
                                               View, branch_skips_work)
from dali_pipelines.draws import Coin, Uniform, Uniforms, coin_can_vary, constant
from dali_pipelines.recipe import ViewsConfig, view_entry

TRUNCATE_SIGMAS = 4.0
"""The blur window is cut to +-4 sigma when that is narrower than BYOL's: the weights dropped sum to
< 6.4e-5 of the kernel, under 0.02 of a level on 0..255 pixels, and small sigmas cost 3-9 taps
instead of 23."""


BRANCH_FROM_SIZE = 64
"""The smallest CPU view whose blur of a varying probability sits in a conditional (`unit.branch_skips_work`):
at BYOL's 0.1 the undrawn 90 % skip 0.9 x the two passes (19 µs at 96 px, 4 at 32), which outweighs the
conditional's four operators (~12 µs) from about 64 px."""


class BlurDraws(NamedTuple):
    """The unit's draws of one image: (V, 1) bool coins (None where no view's can vary), (V, 1) sigmas in pixels
    (drawn for every view), the (V, 1) int32 window widths, and on the CPU the kernels (`blur_kernels`)."""

    blur: object
    sigma: object
    width: object
    rows: object = None      # (V, taps) normalized weights (`blur_kernels`)
    filtered: tuple = ()     # per view: filtered whatever its coin (`filtered_views`)
    half: object = None      # (V, 1) the kept half-widths of `rows` where they are left-aligned (`blur_kernels`)


class BlurView(NamedTuple):
    """One view's record: its decision (a scalar bool or a Python bool), sigma and window width, and on the
    CPU its (1, w) kernel."""

    blur: object
    sigma: object
    width: object
    row: object = None


def blur_taps(size: int) -> int:
    """BYOL's kernel: radius int(size / 20), i.e. 23 taps at 224 and 9 at 96."""
    return 2 * int(size / 20) + 1


def view_halves(views: ViewsConfig) -> np.ndarray:
    """(V, 1) the largest half-width of each view's window (BYOL's radius for its size)."""
    sizes = [spec.size for spec in views.view_specs()]
    return np.asarray([[blur_taps(size) // 2] for size in sizes], np.float32)


def full_windows(views: ViewsConfig) -> bool:
    """Whether every view keeps BYOL's whole window at any drawn sigma (4 sigma reaches its radius from the
    smallest sigma up, e.g. 32 px views: radius 1): the windows are then known when the graph is built."""
    return math.ceil(TRUNCATE_SIGMAS * views.blur_sigma[0]) >= int(view_halves(views).max())


def half_widths(sigma, views: ViewsConfig):
    """(V, 1) half-widths kept: min(BYOL's radius, ceil(4 sigma)); BYOL's radius itself where the windows are
    full (`full_windows`)."""
    halves = view_halves(views)
    if full_windows(views):
        return constant(halves)
    limit = float(halves[0, 0]) if (halves == halves[0, 0]).all() else constant(halves)
    return dmath.min(dmath.ceil(TRUNCATE_SIGMAS * sigma), limit)


def kernel_taps(views: ViewsConfig) -> int:
    """Columns of the image's (V, taps) kernel matrix (`blur_kernels`): the widest view's BYOL window."""
    return int(view_halves(views).max()) * 2 + 1


def blur_kernels(sigma, half, views: ViewsConfig):
    """(V, taps) every view's normalized Gaussian weights at its sigma. Left-aligned: view k's kernel is the first
    2 half[k] + 1 entries of row k (centre at half[k]), the rest zeros. Where the windows are full
    (`full_windows`), centred on BYOL's radius r[k] instead, so that a view's kernel is the fixed slice of its
    first 2 r[k] + 1 entries, zeros beyond half[k] from the centre (a one-tap identity where half[k] is 0)."""
    halves = view_halves(views)
    taps = kernel_taps(views)
    full = full_windows(views)
    offset = constant(np.arange(taps, dtype=np.float32).reshape(1, taps)) - (constant(halves) if full else half)
    kept = dmath.abs(offset) <= half if full else offset <= half
    weights = dmath.exp(offset * offset * (-0.5 / (sigma * sigma))) * kept
    return weights / fn.reductions.sum(weights, axes=[1], keep_dims=True)


def filtered_views(views: ViewsConfig, probabilities: Sequence[float], device: str) -> list[bool]:
    """Per view, whether it is filtered without a conditional although its probability varies (its kernel a
    one-tap identity where the blur was not drawn): every such view on the GPU, the small ones on the CPU."""
    return [coin_can_vary(p) and blurs(spec.size) and not branch_skips_work(device, spec.size, BRANCH_FROM_SIZE)
            for p, spec in zip(probabilities, views.view_specs())]


def blurs(size: int) -> bool:
    """Whether BYOL's kernel does anything at a view side of `size` (below 20 px it is one tap)."""
    return blur_taps(size) > 1


def blur(x, view: BlurView, device: str):
    """Gaussian blur at the view's sigma over its window. CPU: two 1-D `fn.filter` passes (OpenCV's SIMD kernels,
    ~6x DALI's CPU gaussian_blur; uint8 between the passes, reflect-101 border) with the view's kept weights.
    GPU: DALI's separable `fn.gaussian_blur`."""
    if device == "gpu":
        return fn.gaussian_blur(x, sigma=view.sigma, window_size=view.width)
    return fn.filter(fn.filter(x, view.row), fn.reshape(view.row, shape=[-1, 1]))


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

    def probabilities(self, views: ViewsConfig) -> tuple[float, ...]:
        """Each view's blur probability."""
        return tuple(view_entry(views.blur_p, k) for k in range(views.num_views))

    def blurred(self, views: ViewsConfig) -> list[bool]:
        """Per view, whether it can be blurred at all: a probability above 0 and a kernel of more than one tap."""
        return [p > 0.0 and blurs(spec.size) for p, spec in zip(self.probabilities(views), views.view_specs())]

    def columns(self, views: ViewsConfig) -> tuple:
        """A coin per view (where some view's can vary) and a sigma for every view."""
        p = self.probabilities(views)
        coin = (Coin("blur", p),) if any(coin_can_vary(q) for q in p) else ()
        return coin + (Uniform("sigma", (views.blur_sigma[0],) * len(p), (views.blur_sigma[1],) * len(p)),)

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: Uniforms | None, earlier) -> BlurDraws:
        """The coins, the sigmas and the windows; the CPU's kernels. Where views are filtered whatever their coin
        (`filtered_views`: every view on the GPU, the small ones on the CPU) the windows shrink to one tap where
        the blur was not drawn."""
        p = self.probabilities(views)
        coins = uniforms.coin("blur") if any(coin_can_vary(q) for q in p) else None
        sigma = uniforms.value("sigma")
        half = half_widths(sigma, views)
        filtered = tuple(filtered_views(views, p, image.device))
        if any(filtered):
            half = half * coins
        if image.device == "gpu":
            return BlurDraws(coins, sigma, fn.cast(2.0 * half + 1.0, dtype=types.INT32), None, filtered)
        if not any(self.blurred(views)):
            return BlurDraws(coins, sigma, None, None, filtered)
        width = None if full_windows(views) else fn.cast(2.0 * half + 1.0, dtype=types.INT32)
        return BlurDraws(coins, sigma, width, blur_kernels(sigma, half, views), filtered,
                         None if full_windows(views) else half)

    def per_view(self, draws: BlurDraws, views: ViewsConfig) -> list[BlurView]:
        """Each view's decision (a Python bool where its probability is 0 or 1, or where the view is filtered
        whatever its coin), sigma, width and kernels; no blur where BYOL's kernel is one tap."""
        records = []
        blurred = self.blurred(views)
        for k, (p, spec) in enumerate(zip(self.probabilities(views), views.view_specs())):
            if not blurred[k]:
                records.append(BlurView(False, None, None))
                continue
            blur = True if draws.filtered[k] else draws.blur[k, 0] if coin_can_vary(p) else p >= 1.0
            if draws.rows is None:
                records.append(BlurView(blur, draws.sigma[k, 0], draws.width[k, 0]))
            elif draws.width is None:
                records.append(BlurView(blur, None, None, draws.rows[k:k + 1, 0:blur_taps(spec.size)]))
            else:
                records.append(BlurView(blur, None, None, draws.rows[k:k + 1, 0:draws.width[k, 0]]))
        return records

    def apply(self, x, view: View):
        """The blur where drawn: always at probability 1, never at 0 or below 20 px (no operator); every view of a
        varying probability on the GPU and below `BRANCH_FROM_SIZE` on the CPU (a one-tap kernel where not
        drawn), a conditional above."""
        record = view.draws[self.name]
        if record.blur is False:
            return x
        if record.blur is True:
            return blur(x, record, view.device)
        if record.blur:
            x = blur(x, record, view.device)
        return x

    def fused_step(self, draws: BlurDraws, views: Sequence[View]) -> FusedStep | None:
        """On the CPU, the blur of the views below `BRANCH_FROM_SIZE` that are filtered without a conditional (at
        probability 1, or a one-tap kernel where not drawn) as a step of the view pass; views without a blur are
        left alone, the others keep their filter passes and conditional."""
        config = views[0].views
        blurred = self.blurred(config)
        probabilities = self.probabilities(config)
        fused = frozenset(k for k, view in enumerate(views) if blurred[k] and view.spec.size < BRANCH_FROM_SIZE
                          and (draws.filtered[k] or probabilities[k] >= 1.0))
        leaves = frozenset(k for k in range(len(views)) if not blurred[k])
        if not fused:
            return FusedStep("blur", None, 0, fused, leaves)
        half = constant(view_halves(config)) if draws.half is None else draws.half
        return FusedStep("blur", fn.cat(half, draws.rows, axis=1), 1 + kernel_taps(config),
                         fused, leaves)

    def stats(self, draws: BlurDraws, views: ViewsConfig) -> tuple:
        """The decisions (a view's probability where it is 0 or 1) and the sigmas."""
        if draws.blur is None:
            return constant([[float(p >= 1.0)] for p in self.probabilities(views)]), draws.sigma
        return draws.blur * 1.0, draws.sigma
