"""Tests of the photo corpus generator and the torchvision + PIL baseline loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from relic_fast.bench.corpus import SOURCES, WIDTH_RANGE, make_photo_corpus
from relic_fast.bench.torchvision_recipe import (ViewCollate, blur_kernel_size, build_torchvision_loader,
                                           view_transform)
from dali_pipelines.batch import ViewBatch as DaliViewBatch
from dali_pipelines.recipe import ViewsConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Ten photo JPEGs (seed 0), shared by the tests of this module."""
    return make_photo_corpus(tmp_path_factory.mktemp("corpus"), count=10, seed=0)


def jpeg_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def test_corpus_is_a_class_tree_of_real_sized_jpegs(corpus):
    files = sorted(corpus.rglob("*.jpg"))
    assert len(files) == 10
    assert {f.parent.name for f in files} == set(SOURCES), "10 images take turns over the 8 classes"
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert WIDTH_RANGE[0] <= image.width <= WIDTH_RANGE[1]
            assert 0.5 <= image.width / image.height <= 1.8
        assert path.stat().st_size > 5_000, "a photograph, not a flat synthetic image"


def test_corpus_is_deterministic_per_seed(corpus, tmp_path):
    again = make_photo_corpus(tmp_path / "again", count=10, seed=0)
    assert jpeg_bytes(again) == jpeg_bytes(corpus)
    other = make_photo_corpus(tmp_path / "other", count=10, seed=1)
    assert jpeg_bytes(other).keys() == jpeg_bytes(corpus).keys()
    assert jpeg_bytes(other) != jpeg_bytes(corpus)


def test_blur_kernel_follows_byol_radius():
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 9
    views = ViewsConfig()
    blur = [t for t in view_transform(views, 0).transforms if type(t).__name__ == "RandomApply"][-1]
    assert blur.p == 1.0 and tuple(blur.transforms[0].kernel_size) == (23, 23)
    small_steps = [type(t).__name__ for t in view_transform(views, views.num_large + 1).transforms]
    assert "RandomSolarize" in small_steps, "view index 5 takes the second (solarizing) setting"


def test_collate_is_view_major():
    num_large, num_small, batch = 2, 3, 4
    samples = [([torch.full((3, 8, 8), 10.0 * v + b) for v in range(num_large)]
                + [torch.full((3, 4, 4), 10.0 * v + b) for v in range(num_large, num_large + num_small)], b)
               for b in range(batch)]
    views = ViewCollate(num_large)(samples)
    assert views.large.shape == (num_large * batch, 3, 8, 8)
    assert views.small.shape == (num_small * batch, 3, 4, 4)
    for v in range(num_large):
        for b in range(batch):
            assert views.large[v * batch + b].eq(10.0 * v + b).all()
    for s in range(num_small):
        for b in range(batch):
            assert views.small[s * batch + b].eq(10.0 * (num_large + s) + b).all()
    assert views.labels.tolist() == list(range(batch))


@pytest.mark.parametrize("blur", ["torchvision", "pil"])
def test_torchvision_loader_yields_the_documented_layout(corpus, blur):
    files = sorted(corpus.rglob("*.jpg"))
    labels = [SOURCES.index(f.parent.name) for f in files]
    views = ViewsConfig(num_large=2, num_small=1, large_size=32, small_size=16)
    loader = build_torchvision_loader(files, labels, views, batch_size=4, num_workers=0, seed=0, blur=blur)
    assert len(loader) == 2, "10 images, batch 4, last batch dropped"
    batch = next(iter(loader))
    assert batch.large.shape == (8, 3, 32, 32) and batch.small.shape == (4, 3, 16, 16)
    assert batch.large.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(batch, DaliViewBatch), "the DALI loader's batch type"
    assert batch.large.dtype == torch.float32 and batch.normalized
    assert -2.2 <= batch.large.min() and batch.large.max() <= 2.7, "ImageNet-normalized [0, 1] pixels"
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (4,)
    assert not torch.equal(batch.large[:4], batch.large[4:]), "two independently augmented views"


def test_torchvision_loader_without_small_views(corpus):
    files = sorted(corpus.rglob("*.jpg"))
    views = ViewsConfig(num_large=2, num_small=0, large_size=24)
    batch = next(iter(build_torchvision_loader(files, [0] * len(files), views, batch_size=5, num_workers=0)))
    assert batch.small is None and batch.large.shape == (10, 3, 24, 24)


def test_corpus_bytes_do_not_depend_on_the_worker_count(tmp_path):
    serial = make_photo_corpus(tmp_path / "serial", count=130, seed=2, workers=1)
    parallel = make_photo_corpus(tmp_path / "parallel", count=130, seed=2, workers=2)
    assert len(jpeg_bytes(serial)) == 130
    assert jpeg_bytes(parallel) == jpeg_bytes(serial)
