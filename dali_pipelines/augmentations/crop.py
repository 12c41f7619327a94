"""The random resized crop that makes every view: a window of the decoded image, resized to the view's side.

Crop windows: ONE attempt, clamped (BYOL's reference code): area a ~ U(area of the view), aspect
r = exp(U(log range)), relative width sqrt(a r H / W) and height sqrt(a W / (r H)), each clamped to
1 (the whole side), offset uniform over the remaining room. Where the flip (`flip.py`) was drawn the
window's x start and end are swapped (x0 > x1): `fn.resize` then mirrors for free. The view is cut
and resized from the decoded image in uint8, antialiased.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from nvidia.dali import fn, types
import nvidia.dali.math as dmath

from dali_pipelines.augmentations.flip import Flip
from dali_pipelines.augmentations.unit import Augmentation, ImageInputs, Stage, StatsColumns, StatsGroup, View
from dali_pipelines.draws import per_view
from dali_pipelines.recipe import ViewsConfig, default_interpolation


class Window(NamedTuple):
    """A view's crop window in relative coordinates: `start` (y0, x0) and `end` (y1, x1), x0 > x1 when
    flipped; the ROI of `fn.resize`."""

    start: object
    end: object


def crop_windows(shape, views: ViewsConfig, flip):
    """(V, 4) one-attempt clamped windows for an image of `shape` (H, W, C), x swapped where `flip`."""
    count = views.num_views
    low = per_view([views.large_area[0]] * views.num_large + [views.small_area[0]] * views.num_small)
    high = per_view([views.large_area[1]] * views.num_large + [views.small_area[1]] * views.num_small)
    uniform = fn.random.uniform(range=[0.0, 1.0], shape=[3, count])
    area = low + uniform[0] * (high - low)
    log_low, log_high = math.log(views.aspect_ratio[0]), math.log(views.aspect_ratio[1])
    ratio = dmath.exp(log_low + uniform[1] * (log_high - log_low))
    aspect = fn.cast(shape[0], dtype=types.FLOAT) / fn.cast(shape[1], dtype=types.FLOAT)  # H / W
    width = dmath.min(dmath.sqrt(area * ratio * aspect), 1.0)
    height = dmath.min(dmath.sqrt(area / (ratio * aspect)), 1.0)
    room = fn.random.uniform(range=[0.0, 1.0], shape=[2, count])
    y0, x0 = room[0] * (1.0 - height), room[1] * (1.0 - width)
    x_start, x_end = x0 + flip * width, x0 + width - flip * width
    return fn.stack(y0, x_start, y0 + height, x_end, axis=1)


def crop(image, window: Window, size: int, interp):
    """The `size` x `size` view of `image` inside `window` (mirrored when flipped), antialiased."""
    return fn.resize(image, size=[size, size], roi_start=window.start, roi_end=window.end,
                     roi_relative=True, interp_type=interp, antialias=True)


def interpolation_type(views: ViewsConfig, device: str):
    """DALI's resampling filter for `views.interpolation` on a pipeline of `device` ("auto" resolved)."""
    interpolation = default_interpolation(device) if views.interpolation == "auto" else views.interpolation
    return types.INTERP_CUBIC if interpolation == "cubic" else types.INTERP_LINEAR


class Crop(Augmentation):
    """Every view's window (drawn after the flip, which it reads) and the resize that cuts the view."""

    name = "crop"
    settings = ("large_size", "small_size", "large_area", "small_area", "aspect_ratio", "interpolation")
    stage = Stage.CUT
    stats_columns = (StatsColumns(("y0", "x0", "y1", "x1"), StatsGroup.WINDOW),)

    def draw(self, image: ImageInputs, views: ViewsConfig, earlier) -> object:
        """(V, 4) windows: y0, x0, y1, x1 relative; x0 > x1 where the flip was drawn."""
        return crop_windows(image.shape, views, earlier[Flip.name])

    def per_view(self, draws, views: ViewsConfig) -> list[Window]:
        """Each view's window."""
        return [Window(draws[k, 0:2], draws[k, 2:4]) for k in range(views.num_views)]

    def apply(self, x, view: View):
        """The view cut from the decoded image `x`."""
        return crop(x, view.draws[self.name], view.spec.size, interpolation_type(view.views, view.device))

    def stats(self, draws) -> tuple:
        """The windows."""
        return (draws,)
