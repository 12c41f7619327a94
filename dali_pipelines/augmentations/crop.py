"""The random resized crop that makes every view: a window of the decoded image, resized to the view's side.

Crop windows: ONE attempt, clamped (BYOL's reference code): area a ~ U(area of the view), aspect
r = exp(U(log range)), relative width sqrt(a r H / W) and height sqrt(a W / (r H)), each clamped to
1 (the whole side), offset uniform over the remaining room. Where the flip (`flip.py`) was drawn the
window's x start and end are swapped (x0 > x1): `fn.resize` then mirrors for free. The view is cut
and resized from the decoded image in uint8, antialiased.

On the CPU, a decoded photo with at least 4x the pixels that its smallest window needs (`shrink_area`) is first
halved, once, with an exact 2x2 box (`cpu_kernels.halved`, one compiled pass): the antialiased resize of six
windows from the full photo costs far more (docs/performance.md), and every window still has at least the view's
side in pixels, so each view is still a downscale. Windows are relative,
so neither they nor the saliency masks (cut with the same windows at their own resolution) change.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.augmentations.cpu_kernels import halved
from dali_pipelines.augmentations.flip import Flip
from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, Stage, StatsColumns, StatsGroup, View
from dali_pipelines.draws import Uniform, Uniforms, constant
from dali_pipelines.recipe import ViewsConfig, default_interpolation


class Window(NamedTuple):
    """A view's crop window in relative coordinates: `start` (y0, x0) and `end` (y1, x1), x0 > x1 when
    flipped; the ROI of `fn.resize`."""

    start: object
    end: object


def crop_windows(shape, views: ViewsConfig, uniforms: Uniforms, flip) -> Window:
    """The (V, 2) starts and ends of every view's one-attempt clamped window for an image of `shape` (H, W, C),
    x swapped where `flip` ((V, 2) bool (never, flip) coins: `Flip.draw`; or a Python bool)."""
    area, log_ratio = uniforms.value("area"), uniforms.value("log_ratio")           # (V, 1) each
    ratio = dmath.exp(log_ratio) * (shape[0] / shape[1])                            # r H / W
    size = dmath.min(dmath.sqrt(area * dmath.pow(ratio, constant([[-1.0, 1.0]]))), 1.0)  # (V, 2): h, w
    start = uniforms.block("room_y", 2) * (1.0 - size)                              # y0, x0
    end = start + size
    if flip is False:
        return Window(start, end)
    mirror = size * (constant([[0.0, 1.0]]) if flip is True else flip)              # 0, flip * w
    return Window(start + mirror, end - mirror)


def crop(image, window: Window, size: int, interp):
    """The `size` x `size` view of `image` inside `window` (mirrored when flipped), antialiased."""
    return fn.resize(image, size=[size, size], roi_start=window.start, roi_end=window.end,
                     roi_relative=True, interp_type=interp, antialias=True)


def interpolation_type(views: ViewsConfig, device: str):
    """DALI's resampling filter for `views.interpolation` on a pipeline of `device` ("auto" resolved)."""
    interpolation = default_interpolation(device) if views.interpolation == "auto" else views.interpolation
    return types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR


def shrink_area(views: ViewsConfig) -> float:
    """The fewest pixels (H x W) an image needs for its smallest window of any view to keep the view's side in
    pixels: a window of area a and aspect r has sides sqrt(a H W r) and sqrt(a H W / r), the shorter at least
    sqrt(a H W m), m = min(r, 1 / r) over the aspect range."""
    m = min(min(r, 1.0 / r) for r in views.aspect_ratio)        # min(r, 1 / r) peaks at r = 1: an end is lowest
    kinds = [(views.large_size, views.large_area[0])] * bool(views.num_large)
    kinds += [(views.small_size, views.small_area[0])] * bool(views.num_small)
    return max(size * size / (area * m) for size, area in kinds)


class Crop(Augmentation):
    """Every view's window (drawn after the flip, which it reads) and the resize that cuts the view."""

    name = "crop"
    settings = ("large_size", "small_size", "large_area", "small_area", "aspect_ratio", "interpolation")
    stage = Stage.CUT
    stats_columns = (StatsColumns(("y0", "x0", "y1", "x1"), StatsGroup.WINDOW),)

    def columns(self, views: ViewsConfig) -> tuple:
        """Per view: the area (in the view's range), the log aspect ratio, the room above and left of the window."""
        large, small = views.num_large, views.num_small
        log_aspect = (math.log(views.aspect_ratio[0]), math.log(views.aspect_ratio[1]))
        return (Uniform("area", (views.large_area[0],) * large + (views.small_area[0],) * small,
                        (views.large_area[1],) * large + (views.small_area[1],) * small),
                Uniform("log_ratio", (log_aspect[0],) * views.num_views, (log_aspect[1],) * views.num_views),
                Uniform("room_y", (0.0,) * views.num_views, (1.0,) * views.num_views),
                Uniform("room_x", (0.0,) * views.num_views, (1.0,) * views.num_views))

    def draw(self, image: ImageInputs, views: ViewsConfig, uniforms: Uniforms | None, earlier) -> Window:
        """Every view's window: (V, 2) starts (y0, x0) and ends (y1, x1), relative; x0 > x1 where flipped."""
        return crop_windows(image.shape, views, uniforms, earlier[Flip.name])

    def per_view(self, draws: Window, views: ViewsConfig) -> list[Window]:
        """Each view's window."""
        return [Window(draws.start[k], draws.end[k]) for k in range(views.num_views)]

    def prepare(self, image, inputs: ImageInputs, views: ViewsConfig):
        """On the CPU, the decoded image halved where it has at least 4x the pixels its smallest window needs
        (`shrink_area`); as decoded elsewhere, and on the GPU (its pixel work is not the pipeline's limit)."""
        if inputs.device != "cpu":
            return image
        if inputs.shape[0] * inputs.shape[1] >= 4.0 * shrink_area(views):
            image = halved(image, inputs.shape)
        return image

    def apply(self, x, view: View):
        """The view cut from the decoded image `x`."""
        return crop(x, view.draws[self.name], view.spec.size, interpolation_type(view.views, view.device))

    def stats(self, draws: Window, views: ViewsConfig) -> tuple:
        """The windows: y0, x0, y1, x1."""
        return (fn.cat(draws.start, draws.end, axis=1),)
