"""Rendering of the demo dataset's images: shapes (inside tests), background textures, colours, anti-aliasing.

Pure numpy on a supersampled grid, one image at a time from a caller-supplied RNG, so that `demo_data` can
reproduce any image from (seed, split, index) alone. Every shape fits the unit disc of its own frame, which lets
`render` confine the object work to the object's bounding box.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image

CLASS_NAMES = ("circle", "crescent", "cross", "ellipse", "heart", "hexagon", "ring", "square", "star", "triangle")
"""Foreground shape classes, sorted: a label indexes this tuple, the same order a folder reader's sorted names give."""

BACKGROUND_FAMILIES = ("stripes", "checkerboard", "clouds", "dots", "gradient", "waves", "grid", "speckle",
                       "zigzag", "sunburst")
"""Background texture families; class i owns family i."""

SUPERSAMPLE = 2
"""Render at this multiple of the output size and average down: anti-aliased edges at numpy speed."""

OBJECT_RADIUS = (0.6, 0.85)
"""Range of the object's radius as a fraction of half the image: large enough that the shape survives the
32 px views and crops of the CPU demo (smaller objects left every encoder of the demo budget at chance on
`val`: docs/results.md)."""

FOREGROUND_STYLES = (0.7, 0.15, 0.15)
"""Probabilities of a solid, gradient or striped object: mostly solid, so the outline is the clearest edge."""


# ---- geometry ------------------------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel-centre coordinates x (right) and y (down), both in [-1, 1]."""
    n = size * SUPERSAMPLE
    axis = (np.arange(n, dtype=np.float32) + 0.5) * (2.0 / n) - 1.0
    y, x = np.meshgrid(axis, axis, indexing="ij")
    return x, y


def _inside_convex(u: np.ndarray, v: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Points inside a convex polygon with counter-clockwise (in the y-down frame: clockwise) vertices."""
    inside = np.ones(u.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0)):
        inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0  # left of edge a->b
    return inside


def _star_vertices(points: int, outer: float, inner: float) -> np.ndarray:
    """Vertices (outer, inner, outer, ...) of a star, or of a regular polygon when inner == outer; tip up."""
    radii = np.tile([outer, inner], points) if inner != outer else np.full(points, outer)
    angles = -np.pi / 2 + np.arange(len(radii)) * 2 * np.pi / len(radii)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1).astype(np.float32)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star as a union of convex kites (centre, inner, tip, inner)."""
    corners = _star_vertices(5, 1.0, 0.42)
    inside = np.zeros(u.shape, dtype=bool)
    for k in range(0, 10, 2):
        kite = np.stack([np.zeros(2, np.float32), corners[k - 1], corners[k], corners[k + 1]])
        inside |= _inside_convex(u, v, kite)
    return inside


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Classic implicit heart (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled and centred into the unit disc."""
    x, y = u * 1.35, -v * 1.35 + 0.2
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 0.9**2,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "triangle": lambda u, v: _inside_convex(u, v, _star_vertices(3, 1.0, 1.0)),
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.92)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.92)),
    "ring": lambda u, v: (u * u + v * v <= 0.92**2) & (u * u + v * v >= 0.55**2),
    "ellipse": lambda u, v: (u / 0.95) ** 2 + (v / 0.5) ** 2 <= 1,
    "hexagon": lambda u, v: _inside_convex(u, v, _star_vertices(6, 0.9, 0.9)),
    "heart": _heart,
    "crescent": lambda u, v: (u * u + v * v <= 0.92**2) & ((u - 0.45) ** 2 + v * v >= 0.7**2),
}
"""Inside tests in the object's own frame, where the shape fits the unit disc."""
assert sorted(_SHAPES) == list(CLASS_NAMES)


# ---- background textures: each returns t in [0, 1], blended between two colours --------------------------------

def _rotated(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid rotated by a random angle: (p, q) along and across a random direction."""
    angle = rng.uniform(0, np.pi)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return x * cos + y * sin, y * cos - x * sin


def _frac(a: np.ndarray) -> np.ndarray:
    """Fractional part in [0, 1) (a - floor(a): several times faster than `% 1` on float32)."""
    return a - np.floor(a)


def _square_wave(phase: np.ndarray) -> np.ndarray:
    """A square wave with softened edges from a phase in radians."""
    return np.clip(0.5 + 2.5 * np.sin(phase), 0.0, 1.0)


def _resized_noise(rng: np.random.Generator, cells: int, shape: tuple[int, int], resample: int) -> np.ndarray:
    """Uniform noise on a cells x cells grid resized to `shape` (rows, columns)."""
    low = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.asarray(low.resize(shape[::-1], resample), dtype=np.float32)


def _tex_stripes(rng, x, y):
    p, _ = _rotated(rng, x, y)
    return _square_wave(np.pi * rng.uniform(3, 7) * p + rng.uniform(0, 2 * np.pi))


def _tex_checkerboard(rng, x, y):
    p, q = _rotated(rng, x, y)
    cells = rng.uniform(2, 4)
    return ((np.floor(p * cells) + np.floor(q * cells)) % 2).astype(np.float32)


def _tex_clouds(rng, x, y):
    total = sum(_resized_noise(rng, cells, x.shape, Image.BICUBIC) * 0.5**octave
                for octave, cells in enumerate((4, 8, 16)))
    return np.clip((total - total.mean()) / (3 * total.std() + 1e-6) + 0.5, 0.0, 1.0)


def _tex_dots(rng, x, y):
    p, q = _rotated(rng, x, y)
    spacing, offset = rng.uniform(0.25, 0.45), rng.uniform(0, 1, size=2)
    du, dv = _frac(p / spacing + offset[0]) - 0.5, _frac(q / spacing + offset[1]) - 0.5
    return (du * du + dv * dv <= rng.uniform(0.2, 0.32) ** 2).astype(np.float32)


def _tex_gradient(rng, x, y):
    p, _ = _rotated(rng, x, y)
    return np.clip(p / rng.uniform(1.0, 1.4) * 0.5 + 0.5, 0.0, 1.0)


def _tex_waves(rng, x, y):
    p, q = _rotated(rng, x, y)
    wobble = rng.uniform(1.0, 2.5) * np.sin(np.pi * rng.uniform(1.5, 3) * q)
    return _square_wave(np.pi * rng.uniform(2.5, 5) * p + wobble)


def _tex_grid(rng, x, y):
    p, q = _rotated(rng, x, y)
    cells, width = rng.uniform(2, 4), rng.uniform(0.1, 0.18)
    near = lambda s: np.abs(_frac(s * cells) - 0.5) >= 0.5 - width  # noqa: E731
    return (near(p) | near(q)).astype(np.float32)


def _tex_speckle(rng, x, y):
    n = x.shape[0]
    block = int(rng.integers(2, 5)) * SUPERSAMPLE
    cells = -(-n // block)
    low = (rng.random((cells, cells)) > 0.5).astype(np.float32)
    return np.repeat(np.repeat(low, block, axis=0), block, axis=1)[:n, :n]


def _tex_zigzag(rng, x, y):
    p, q = _rotated(rng, x, y)
    triangle = 2 * np.abs(_frac(p * rng.uniform(1.5, 3)) - 0.5)
    return _square_wave(np.pi * rng.uniform(2.5, 5) * (q + rng.uniform(0.15, 0.3) * triangle))


def _tex_sunburst(rng, x, y):
    cx, cy = rng.uniform(-0.6, 0.6, size=2)
    angle = np.arctan2(y - np.float32(cy), x - np.float32(cx))
    return _square_wave(int(rng.integers(5, 10)) * angle + rng.uniform(0, 2 * np.pi))


_TEXTURES = {name: globals()[f"_tex_{name}"] for name in BACKGROUND_FAMILIES}


# ---- colours and the foreground ----------------------------------------------------------------------------------

def _colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` random RGB colours in [0, 1] from random hue, saturation 0.25-1 and value 0.2-1."""
    hue, saturation, value = rng.random(count), rng.uniform(0.25, 1, count), rng.uniform(0.2, 1, count)
    sector = np.floor(hue * 6).astype(np.int64) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    channels = np.stack([value, q, p, p, t, value, t, value, value, q, p, p, p, p, t, value, value, q])
    rgb = channels.reshape(3, 6, count)[:, sector, np.arange(count)]  # the HSV -> RGB table, one column per sector
    return rgb.T.astype(np.float32)


BACKGROUND_CONTRAST = 0.35
"""The background's two colours are pulled towards their mean to this fraction of their distance: the texture
stays visible (the spurious cue is still there to learn) but no longer outshouts the object's edges."""


def _background_colours(rng: np.random.Generator) -> np.ndarray:
    """Two background colours: the most distant of 8 candidate pairs, pulled together to `BACKGROUND_CONTRAST`."""
    pairs = _colours(rng, 16).reshape(8, 2, 3)
    pair = pairs[np.argmax(np.linalg.norm(pairs[:, 0] - pairs[:, 1], axis=1))]
    mean = pair.mean(axis=0)
    return (mean + (pair - mean) * np.float32(BACKGROUND_CONTRAST)).astype(np.float32)


def _far_colours(rng: np.random.Generator, avoid: np.ndarray, count: int) -> np.ndarray:
    """`count` colours, each the one of 12 candidates farthest from every colour in `avoid`."""
    chosen = []
    for _ in range(count):
        candidates = _colours(rng, 12)
        distance = np.linalg.norm(candidates[:, None] - avoid[None], axis=2).min(axis=1)
        chosen.append(candidates[np.argmax(distance)])
    return np.stack(chosen)


def _foreground(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Object appearance (H, W, 3): solid, gradient or stripes (`FOREGROUND_STYLES`), in colours far from the
    background."""
    first, second = _far_colours(rng, background, 2)
    style = rng.choice(len(FOREGROUND_STYLES), p=FOREGROUND_STYLES)
    if style == 0:
        return np.broadcast_to(first, u.shape + (3,))
    if style == 1:
        t = np.clip(0.5 + 0.5 * u, 0.0, 1.0)
    else:
        t = _square_wave(np.pi * rng.uniform(2.5, 4) * u) * 0.7 + 0.15
    return first + (second - first) * t[..., None]


def _object_box(n: int, centre: float, scale: float) -> slice:
    """Fine-grid pixel range covering [centre - scale, centre + scale] (every shape fits its unit disc)."""
    low = math.floor((centre - scale + 1) * n / 2) - 1
    return slice(max(low, 0), min(math.ceil((centre + scale + 1) * n / 2) + 1, n))


def render(rng: np.random.Generator, label: int, background: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one image (size, size, 3) uint8 and its saliency mask (size, size) uint8 in {0, 255}.

    Class `label` on family `background`; colours, texture parameters, object size (radius `OBJECT_RADIUS` of
    half the image), position (fully inside) and rotation all come from `rng`, in a fixed order.
    """
    x, y = _grid(size)
    palette = _background_colours(rng)
    t = _TEXTURES[BACKGROUND_FAMILIES[background]](rng, x, y)
    fine = palette[0] + (palette[1] - palette[0]) * t[..., None]
    scale = rng.uniform(*OBJECT_RADIUS)
    cx, cy = rng.uniform(-(1 - scale), 1 - scale, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    box = (_object_box(x.shape[0], cy, scale), _object_box(x.shape[0], cx, scale))  # object work stays in here
    cos, sin = np.float32(np.cos(angle) / scale), np.float32(np.sin(angle) / scale)
    dx, dy = x[box] - np.float32(cx), y[box] - np.float32(cy)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    inside = _SHAPES[CLASS_NAMES[label]](u, v)
    front = _foreground(rng, u, v, palette)
    fine[box] = np.where(inside[..., None], front, fine[box])
    hits = np.zeros(x.shape, dtype=np.uint8)
    hits[box] = inside
    image = np.clip(_box_downsample(fine) * (255 / SUPERSAMPLE**2) + 0.5, 0, 255).astype(np.uint8)
    covered = _box_downsample(hits) * 2 >= SUPERSAMPLE**2  # at least half the sub-pixels are foreground
    return image, np.where(covered, 255, 0).astype(np.uint8)


def _box_downsample(fine: np.ndarray) -> np.ndarray:
    """Sum SUPERSAMPLE x SUPERSAMPLE blocks (strided slices: much faster than a reshape-mean)."""
    step = SUPERSAMPLE
    return sum(fine[i::step, j::step] for i in range(step) for j in range(step))
