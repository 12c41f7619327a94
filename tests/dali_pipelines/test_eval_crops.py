"""The DALI eval loader's crops are the documented ones.

`train=False`: resize the short side to S * 256 / 224, then centre crop S (checked against
torchvision + PIL on images whose colours encode pixel coordinates, so an offset, a flip or a wrong
scale shows up as a colour error). `train=True`: random-resized crops of size S, flipped about half
the time (a left-to-right colour ramp reverses under a flip). Every sample once per epoch, in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.loader import build_eval_loader
from dali_pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, DataConfig

SIZE = 28  # resize target 28 * 256 / 224 = 32: integer, so no rounding ambiguity in the reference
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def coordinate_image(height: int, width: int) -> np.ndarray:
    """RGB image with red rising left to right, green top to bottom, blue a slow diagonal."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 16 + 220 * x / (width - 1)
    green = 16 + 220 * y / (height - 1)
    blue = 64 + 64 * (x + y) / (width + height)
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two classes of coordinate images: landscape and portrait shapes whose resized sides are integers."""
    root = tmp_path_factory.mktemp("eval_crops")
    shapes = [(48, 72), (72, 48), (64, 96), (96, 64), (48, 48)]  # (height, width)
    for index in range(10):
        height, width = shapes[index % len(shapes)]
        folder = root / ("a" if index < 5 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(coordinate_image(height, width)).save(folder / f"{index:02d}.jpg", quality=100,
                                                              subsampling=0)
    return resolve_dataset(str(root), "folder")


def loader(dataset, *, train: bool, batch_size: int = 4, seed: int = 0):
    """The CPU eval loader at SIZE."""
    return build_eval_loader(dataset, image_size=SIZE, batch_size=batch_size, train=train,
                             data=DataConfig(device="cpu", num_threads=1), seed=seed, device_id=None)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Undo the normalization: [0, 255] float pixels."""
    return (images.float() * STD + MEAN) * 255


def reference_val_crop(path: Path) -> torch.Tensor:
    """torchvision's eval transform (antialiased bilinear resize of the short side, centre crop), [0, 255]."""
    image = Image.open(path).convert("RGB")
    transform = T.Compose([T.PILToTensor(), T.Resize(round(SIZE * 256 / 224), antialias=True), T.CenterCrop(SIZE)])
    return transform(image).float()


def epoch(eval_loader) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All (images, labels) of one epoch, plus the batch sizes."""
    images, labels, sizes = [], [], []
    for batch_images, batch_labels in eval_loader:
        images.append(batch_images.cpu())
        labels.append(torch.as_tensor(batch_labels).cpu().flatten())
        sizes.append(batch_images.shape[0])
    return torch.cat(images), torch.cat(labels), sizes


def test_val_crops_match_resize_then_centre_crop(dataset):
    images, labels, sizes = epoch(loader(dataset, train=False))
    assert sizes == [4, 4, 2]                        # every sample once, last batch partial
    assert labels.tolist() == dataset.labels         # in order, no shuffling
    assert images.shape == (10, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    for got, relative in zip(pixels(images), dataset.files):
        expected = reference_val_crop(dataset.root / relative)
        error = (got - expected).abs()
        # Measured: mean <= 0.31, max 1.0 levels. One output pixel of offset already gives a mean
        # error of 1.85-2.75 levels over the three channels (red or green moves >= 5 levels), a flip 25+.
        assert error.mean() < 1.0, f"{relative}: mean error {error.mean():.2f}"
        assert error.max() < 4.0, f"{relative}: max error {error.max():.2f}"


def test_val_crops_are_deterministic(dataset):
    first, _, _ = epoch(loader(dataset, train=False, seed=0))
    second, _, _ = epoch(loader(dataset, train=False, seed=1))
    torch.testing.assert_close(first, second)


def flipped_and_span(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: whether red falls left to right (a flipped ramp) and the red span across the crop."""
    red = pixels(images)[:, 0]
    left, right = red[:, :, :2].mean(dim=(1, 2)), red[:, :, -2:].mean(dim=(1, 2))
    return left > right, (right - left).abs()


def test_train_crops_are_random_resized_and_flipped_about_half_the_time(dataset):
    train_loader = loader(dataset, train=True, batch_size=5, seed=3)
    epochs = [epoch(train_loader) for _ in range(8)]
    for images, labels, sizes in epochs:
        assert sizes == [5, 5]
        assert sorted(labels.tolist()) == sorted(dataset.labels)  # every sample once per epoch
        assert images.shape == (10, 3, SIZE, SIZE)
        assert images.is_contiguous(memory_format=torch.channels_last)
    images = torch.cat([e[0] for e in epochs])
    flipped, span = flipped_and_span(images)
    assert 0.25 < flipped.float().mean().item() < 0.75   # 80 draws of p = 0.5: 4.5 sigma either side
    # Random scale: a full-width crop spans ~200 red levels, a small one far fewer; both must occur.
    assert span.max() > 120 and span.min() < 80
    assert not torch.allclose(epochs[0][0], epochs[1][0])  # each epoch draws new crops
    orders = {tuple(e[1].tolist()) for e in epochs}
    assert len(orders) > 1  # and a new sample order: the probe's SGD must not see one class at a time
