"""The multi-view pipeline's views: layout and dtypes, crop-window statistics, per-sample augmentation rates
(each decision checked against the pixels), and saliency blending."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipelines.augmentations import blur as blur_unit, cpu_kernels
from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.batch import normalize_views
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.pretrain import STATS_FIELDS
from dali_pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ViewsConfig

from tests.support.pipeline_data import SIDE, has_mask, mask_width, pattern_image, sample_colour

COLUMN = {name: i for i, name in enumerate(STATS_FIELDS)}
MEAN_FILL = np.round(np.asarray(IMAGENET_MEAN) * 255)
PLAIN = dict(large_size=SIDE, small_size=SIDE, large_area=(1.0, 1.0), small_area=(1.0, 1.0), aspect_ratio=(1.0, 1.0),
             flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,), solarize_p=(0.0,), saliency_p=0.0)
"""Identity views: the whole (square) image at its own size, nothing applied."""


def plain_views(num_large: int, num_small: int, **changes) -> ViewsConfig:
    """Identity views (`PLAIN`) with `changes`."""
    return ViewsConfig(num_large=num_large, num_small=num_small, **{**PLAIN, **changes})


def batches(path, views: ViewsConfig, *, batch_size: int, count: int, seed: int = 0, **data):
    """`count` batches (across epochs) of a debug CPU loader over `path`."""
    loader = build_pretrain_loader(resolve_dataset(str(path)), views, DataConfig(num_threads=2, **data),
                                   batch_size=batch_size, seed=seed, debug=True)
    out = []
    while len(out) < count:
        out += [batch for _, batch in zip(range(count - len(out)), loader)]
    return out


def views_hwc(batch, num_views: int, large: bool = True) -> np.ndarray:
    """(B, V, H, W, 3) uint8 array of a uint8 batch's large (or small) views."""
    x = batch.large if large else batch.small
    b = batch.labels.shape[0]
    return x.permute(0, 2, 3, 1).reshape(num_views, b, *x.shape[2:], 3).transpose(0, 1).numpy()


def test_shapes_dtypes_and_channels_last(identity_data):
    views = ViewsConfig(num_large=3, num_small=2, large_size=24, small_size=16)
    batch = batches(identity_data.folder, views, batch_size=4, count=1)[0]
    for x, count, size in ((batch.large, 3, 24), (batch.small, 2, 16)):
        assert x.shape == (count * 4, 3, size, size) and x.dtype == torch.uint8  # the trainer normalizes
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert x.stride() == (size * size * 3, 1, size * 3, 3)  # NHWC storage behind an NCHW shape
    assert batch.labels.shape == (4,) and batch.labels.dtype == torch.int64
    assert not batch.normalized
    assert batch.stats.shape == (4, 5, len(STATS_FIELDS))


def test_views_are_view_major_and_normalize_views_is_the_imagenet_normalization(identity_data):
    """Row v*B + b is view v of sample b; normalize_views gives (x / 255 - mean) / std, keeping channels-last."""
    views = plain_views(2, 1)
    raw = batches(identity_data.folder, views, batch_size=4, count=1, shuffle=False)[0]
    dataset = resolve_dataset(str(identity_data.folder))
    for v in range(2):
        for b in range(4):
            index = int(Path(dataset.files[b]).stem)
            assert (raw.large[v * 4 + b, :, 0, 0].numpy() == sample_colour(index)).all()
    for dtype in (torch.float32, torch.bfloat16):
        normalized = normalize_views(raw.large, IMAGENET_MEAN, IMAGENET_STD, dtype)
        assert normalized.dtype == dtype and normalized.is_contiguous(memory_format=torch.channels_last)
        expected = (raw.large.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
            / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
        torch.testing.assert_close(normalized.double(), expected, atol=1e-5 if dtype == torch.float32 else 2e-2, rtol=0)


def reference_windows(count: int, height: int, width: int, area, aspect, rng) -> tuple[np.ndarray, np.ndarray]:
    """Oracle of the one-attempt clamped crop: relative (width, height) of `count` windows."""
    a = rng.uniform(*area, count)
    r = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), count))
    return np.minimum(np.sqrt(a * r * height / width), 1.0), np.minimum(np.sqrt(a * width / (r * height)), 1.0)


def test_crop_windows_match_the_reference_sampler(wide_data):
    """Window area and aspect over ~400 draws per view size, on 48x32 images, against the oracle."""
    views = ViewsConfig(num_large=4, num_small=2, large_size=16, small_size=8, jitter_p=0.0, grayscale_p=0.0,
                        blur_p=(0.0,), solarize_p=(0.0,))
    stats = torch.cat([b.stats for b in batches(wide_data.folder, views, batch_size=16, count=6)]).numpy()
    rng = np.random.default_rng(0)
    for cols, area in ((slice(0, 4), views.large_area), (slice(4, 6), views.small_area)):
        s = stats[:, cols].reshape(-1, len(STATS_FIELDS))
        w, h = np.abs(s[:, 3] - s[:, 1]), s[:, 2] - s[:, 0]
        assert (s[:, 0] >= 0).all() and (s[:, 2] <= 1 + 1e-6).all() and (np.maximum(s[:, 1], s[:, 3]) <= 1 + 1e-6).all()
        realized = w * h
        assert realized.max() <= area[1] + 1e-5
        ref_w, ref_h = reference_windows(200_000, 32, 48, area, views.aspect_ratio, rng)
        ref_area = ref_w * ref_h
        tolerance = 4.5 * ref_area.std() / math.sqrt(len(realized))
        assert abs(realized.mean() - ref_area.mean()) < tolerance
        assert abs(np.mean(w == 1.0) - np.mean(ref_w == 1.0)) < 0.1  # clamping happens as often
        free = (w < 1.0) & (h < 1.0)
        ratio = (w[free] * 48) / (h[free] * 32)  # realized pixel aspect of unclamped windows
        assert ratio.min() >= 0.75 - 1e-3 and ratio.max() <= 4 / 3 + 1e-3
        assert realized[free].min() >= area[0] - 1e-5
        log_ratio = np.log(ratio)
        assert abs(log_ratio.mean()) < 4.5 * log_ratio.std() / math.sqrt(len(log_ratio))  # symmetric range
        assert abs(log_ratio.std() - (math.log(4 / 3) - math.log(0.75)) / math.sqrt(12)) < 0.05  # uniform spread


def binomial_ok(flags: np.ndarray, p: float, sigmas: float = 4.5) -> bool:
    return abs(flags.mean() - p) <= sigmas * math.sqrt(p * (1 - p) / flags.size) + 1e-9


@pytest.fixture(params=["default", "blur in a conditional", "DALI operators"])
def cpu_paths(request, monkeypatch):
    """The CPU graph as built (the blur's size rule: no conditional at these 32 px views; blend, colour, blur and
    solarize in the compiled view pass), the blur's conditional forced on every view (its path from
    `BRANCH_FROM_SIZE` up: the pass stops before it, solarize takes its lookup table), or DALI's operators only (no
    numba: colour by per-view `coord_transform`, the GPU's pass): the same decisions must show in the pixels every
    way."""
    if request.param == "blur in a conditional":
        monkeypatch.setattr(blur_unit, "BRANCH_FROM_SIZE", 0)
    if request.param == "DALI operators":
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    return request.param


def test_augmentation_rates_and_effects(pattern_data, cpu_paths):
    """Flip, grayscale, blur and solarize: per-sample rates match their probabilities per view setting,
    and every recorded decision is visible in the pixels (pattern image, identity crops, no jitter)."""
    views = plain_views(4, 2, flip_p=0.5, grayscale_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))
    got = batches(pattern_data.folder, views, batch_size=32, count=3)
    stats = torch.cat([b.stats for b in got]).numpy()
    pixels = np.concatenate([np.concatenate([views_hwc(b, 4), views_hwc(b, 2, large=False)], 1) for b in got])
    flip, gray, blur, solar, sigma = (stats[..., COLUMN[c]] for c in ("flip", "gray", "blur", "solarize", "sigma"))
    assert binomial_ok(flip, 0.5) and binomial_ok(gray, 0.2)
    assert (blur[:, 0::2] == 1).all() and binomial_ok(blur[:, 1::2], 0.1)
    assert (solar[:, 0::2] == 0).all() and binomial_ok(solar[:, 1::2], 0.2)
    reference = pattern_image().astype(int)
    red = pixels[..., 0].astype(int)
    for s, v in zip(*np.nonzero(np.ones(flip.shape, bool))):
        view = pixels[s, v].astype(int)
        if gray[s, v]:
            assert (view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all()
            continue
        ramp = red[s, v, SIDE // 2]
        assert (ramp[0] > ramp[-1]) == bool(flip[s, v])                    # the ramp runs backwards
        assert (view[..., 2] == (55 if solar[s, v] else 200)).all()         # 255 - 200 where solarized
        amplitude = np.abs(np.diff(view[SIDE // 2, 2:-2, 1])).mean()
        stripes = np.abs(np.diff(reference[0, 2:-2, 1])).mean()
        if not blur[s, v]:
            assert amplitude == stripes
        elif sigma[s, v] > 0.5:
            assert amplitude < 0.8 * stripes


def test_jitter_rate_and_untouched_views(pattern_data, cpu_paths):
    """Jitter p = 0.8 per view; views that drew neither jitter nor grayscale are the image itself."""
    views = plain_views(4, 2, jitter_p=0.8)
    got = batches(pattern_data.folder, views, batch_size=32, count=2)
    stats = torch.cat([b.stats for b in got]).numpy()
    pixels = np.concatenate([np.concatenate([views_hwc(b, 4), views_hwc(b, 2, large=False)], 1) for b in got])
    jitter = stats[..., COLUMN["jitter"]]
    assert binomial_ok(jitter, 0.8)
    same = (pixels == pattern_image()[None, None]).all(axis=(2, 3, 4))
    assert (same == (jitter == 0)).all()


@pytest.mark.parametrize("clip", ["end", "each"])
def test_jitter_on_gray_is_the_additive_brightness_only(gray_data, clip):
    """Hue, saturation and contrast (about the image mean) leave a uniform gray image alone, so the view
    is gray 128 + 255 * U(-0.4, 0.4), clipped: the TF-style additive brightness, in both clip modes."""
    views = plain_views(2, 0, jitter_p=1.0, jitter_clip=clip)
    pixels = np.concatenate([views_hwc(b, 2) for b in batches(gray_data.folder, views, batch_size=16, count=4)])
    pixels = pixels.astype(int).reshape(-1, SIDE * SIDE, 3)
    assert (pixels == pixels[:, :1, :1]).all()  # every view stays uniform and gray
    level = pixels[:, 0, 0] - 128
    assert level.min() >= -103 and level.max() <= 103
    assert level.min() < -80 and level.max() > 80            # the range is used ...
    assert abs(level.mean()) < 4.5 * 59 / math.sqrt(len(level))  # ... symmetrically (std of U(-102, 102) ~ 59)
    assert 45 < level.std() < 70


@pytest.mark.parametrize("fill", ["mean", "noise", "other_image"])
def test_saliency_keeps_foreground_and_replaces_background(identity_data, fill, cpu_paths):
    views = plain_views(2, 1, saliency_p=1.0, saliency_fill=fill)
    for batch in batches(identity_data.folder, views, batch_size=8, count=3):
        large, small = views_hwc(batch, 2).astype(int), views_hwc(batch, 1, large=False).astype(int)
        ids = [identify(large[b, 0]) for b in range(8)]
        stats = batch.stats.numpy()
        for b, index in enumerate(ids):
            colour = np.asarray(sample_colour(index))
            assert (small[b, 0] == colour).all() and stats[b, 2, COLUMN["saliency"]] == 0  # small views: never
            for v in range(2):
                view = large[b, v]
                assert stats[b, v, COLUMN["saliency"]] == float(has_mask(index))
                if not has_mask(index):
                    assert (view == colour).all()  # no mask: never blended
                    continue
                width = mask_width(index)
                assert (view[:, :width] == colour).all()          # foreground kept exactly
                background = view[:, width:]
                if fill == "mean":
                    assert (background == MEAN_FILL).all()
                elif fill == "noise":
                    assert background.std() > 20 and abs(background.mean() - MEAN_FILL.mean()) < 25
                else:
                    other = np.asarray(sample_colour(ids[(b + 1) % 8]))
                    assert (background == other).all()


def identify(view: np.ndarray) -> int:
    """Sample index of an identity view, from its top-left pixel (always foreground)."""
    colour = view[0, 0]
    return next(i for i in range(64) if (np.asarray(sample_colour(i)) == colour).all())


def test_image_and_mask_stay_paired_under_shuffle_and_sharding(identity_data):
    """Every blended view shows its own image's mask width, whatever the order and the rank."""
    views = plain_views(1, 0, saliency_p=1.0)
    seen = set()
    for shard in range(2):
        loader = build_pretrain_loader(resolve_dataset(str(identity_data.file_list)), views,
                                       DataConfig(num_threads=2), batch_size=4, seed=5, shard_id=shard,
                                       num_shards=2)
        for _ in range(2):  # two epochs, two orders
            for batch in loader:
                for view in views_hwc(batch, 1)[:, 0].astype(int):
                    index = identify(view)
                    seen.add(index)
                    background = ~(view == np.asarray(sample_colour(index))).all(axis=(0, 2))
                    width = int(np.argmax(background)) if background.any() else SIDE
                    assert width == (mask_width(index) if has_mask(index) else SIDE), index
    assert seen == set(range(identity_data.count))
