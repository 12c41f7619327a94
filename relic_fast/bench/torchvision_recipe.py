"""The baseline the DALI pipeline is judged against: the same RELICv2 view recipe in torchvision + PIL.

A plain `torch.utils.data.DataLoader` over the same files, `num_workers` processes, each sample
decoded once with PIL and every view cut from it with torchvision's transforms, following the
`ViewsConfig` the DALI pipeline reads:
  RandomResizedCrop(size, scale=area, ratio=aspect_ratio, bicubic)  (torchvision: 10 attempts, then
  a centre crop) -> RandomHorizontalFlip(flip_p) -> RandomApply(ColorJitter(b, c, s, h), jitter_p)
  -> RandomGrayscale(grayscale_p) -> RandomApply(GaussianBlur(kernel, blur_sigma), blur_p of the view)
  -> RandomSolarize(128, solarize_p of the view) -> PILToTensor -> NormalizeView(mean, std) (the
  trainer's own normalization, `dali_pipelines.batch.normalize_views`, done in the workers).
Differences from the paper's recipe, kept because they are what a torchvision user runs:
torchvision's brightness is multiplicative (scale by U(1-b, 1+b)), not additive, whatever
`views.brightness_mode` says; the jitter order is random (torchvision's ColorJitter shuffles it).
Blur: torchvision's GaussianBlur, 2 * (size // 20) + 1 taps (23 at 224, 9 at 96) as in BYOL's code,
by default; `blur="pil"` uses PIL's `ImageFilter.GaussianBlur` instead (an extended-box approximation,
~5x cheaper, what solo-learn and VICReg use): the stronger baseline. Batches come out
in the DALI `ViewBatch` layout: view-major, channels-last, float32, normalized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from dali_pipelines import batch
from dali_pipelines.recipe import ViewsConfig


class ViewBatch(batch.ViewBatch):
    """The DALI loader's `ViewBatch` (same fields, same layout) that the DataLoader can pin.

    `large` (L*B, 3, H, W) and `small` (S*B, 3, h, w) are channels-last and view-major (rows
    v*B..(v+1)*B-1 are view v of samples 0..B-1); `normalized` is always True here (the baseline
    normalizes in its workers)."""

    def pin_memory(self) -> "ViewBatch":
        """A copy in page-locked memory (called by the DataLoader when `pin_memory=True`)."""
        small = None if self.small is None else self.small.pin_memory()
        return ViewBatch(self.large.pin_memory(), small, self.labels.pin_memory(), self.normalized)


def blur_kernel_size(size: int) -> int:
    """Gaussian blur taps for a view of side `size`: 2 * (size // 20) + 1, BYOL's radius (23 at 224)."""
    return 2 * (size // 20) + 1


class NormalizeView:
    """The trainer's normalization (`normalize_views`: one function for every loader) as a torchvision transform
    of one uint8 (3, H, W) view, so the baseline's views hold the very values the DALI loaders' views get on
    the device (picklable for the DataLoader's workers)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, view: torch.Tensor) -> torch.Tensor:
        return batch.normalize_views(view[None], self.mean, self.std)[0]


class PILGaussianBlur:
    """Gaussian blur with sigma drawn from U(low, high), done by PIL (picklable, torch-seeded)."""

    def __init__(self, sigma: tuple[float, float]):
        self.sigma = sigma

    def __call__(self, image):
        from PIL import ImageFilter

        low, high = self.sigma
        radius = low + (high - low) * torch.rand(()).item()  # torch's RNG: seeded per worker
        return image.filter(ImageFilter.GaussianBlur(radius=radius))


def view_transform(views: ViewsConfig, view_index: int, blur: Literal["torchvision", "pil"] = "torchvision"):
    """The torchvision transform producing view `view_index` (large views first, then small ones)."""
    from torchvision import transforms as T

    large = view_index < views.num_large
    size = views.large_size if large else views.small_size
    area = views.large_area if large else views.small_area
    blur_p, solarize_p = views.view_setting(view_index)
    jitter = T.ColorJitter(views.brightness, views.contrast, views.saturation, views.hue)
    steps = [
        T.RandomResizedCrop(size, scale=area, ratio=views.aspect_ratio,
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(views.flip_p),
        T.RandomApply([jitter], p=views.jitter_p),
        T.RandomGrayscale(views.grayscale_p),
    ]
    if blur_p > 0:
        blur_op = (PILGaussianBlur(views.blur_sigma) if blur == "pil"
                   else T.GaussianBlur(blur_kernel_size(size), sigma=views.blur_sigma))
        steps.append(T.RandomApply([blur_op], p=blur_p))
    if solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=128, p=solarize_p))
    steps += [T.PILToTensor(), NormalizeView(views.mean, views.std)]
    return T.Compose(steps)


class MultiViewDataset(Dataset):
    """Images decoded once with PIL; every view of the recipe cut from the decoded image."""

    def __init__(self, files: Sequence[str | Path], labels: Sequence[int], views: ViewsConfig,
                 blur: Literal["torchvision", "pil"] = "torchvision"):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files = [str(f) for f in files]
        self.labels = list(labels)
        self.views = views
        self.transforms = [view_transform(views, v, blur) for v in range(views.num_views)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[list[torch.Tensor], int]:
        """(views of image `index` in view order, label)."""
        from PIL import Image

        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        return [transform(image) for transform in self.transforms], self.labels[index]


def stack_view_major(per_sample: list[list[torch.Tensor]]) -> torch.Tensor:
    """(V*B, C, H, W) channels-last from B lists of V views: row v*B + b is view v of sample b."""
    num_views = len(per_sample[0])
    rows = [sample[v] for v in range(num_views) for sample in per_sample]
    return torch.stack(rows).contiguous(memory_format=torch.channels_last)


class ViewCollate:
    """`collate_fn` turning (views, label) samples into a view-major `ViewBatch` (picklable for workers)."""

    def __init__(self, num_large: int):
        self.num_large = num_large

    def __call__(self, samples: list[tuple[list[torch.Tensor], int]]) -> ViewBatch:
        large = stack_view_major([views[:self.num_large] for views, _ in samples])
        has_small = len(samples[0][0]) > self.num_large
        small = stack_view_major([views[self.num_large:] for views, _ in samples]) if has_small else None
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return ViewBatch(large=large, small=small, labels=labels, normalized=True)


def build_torchvision_loader(files: Sequence[str | Path], labels: Sequence[int], views: ViewsConfig, *,
                             batch_size: int, num_workers: int, seed: int = 0,
                             drop_last: bool = True, shuffle: bool = True,
                             blur: Literal["torchvision", "pil"] = "torchvision",
                             pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding `ViewBatch`es of the recipe `views` over `files` (the baseline).

    Workers persist across epochs (as a tuned baseline would); the seed fixes the shuffling and
    the workers' random streams. `blur` picks torchvision's exact Gaussian blur or PIL's faster one;
    `pin_memory` pins batches for fast copies to a GPU.
    """
    dataset = MultiViewDataset(files, labels, views, blur)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, collate_fn=ViewCollate(views.num_large),
                      persistent_workers=num_workers > 0, generator=generator, pin_memory=pin_memory)
