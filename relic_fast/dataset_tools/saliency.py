"""Unsupervised saliency maps in torch, batched (GPU when present): classical methods, no labels, no training.

RELICv2 cuts some large views from a background-removed image; the paper gets its masks without
labels (DeepUSPS). These are the classical label-free stand-ins, each a function
`(rgb (B, 3, S, S) float in [0, 1]) -> saliency (B, S, S) in [0, 1]`:
- `spectral_residual` (Hou & Zhang, CVPR 2007): what is left of the log-amplitude spectrum after
  removing its local average is the "unexpected" part of the image; repeated texture cancels out.
- `frequency_tuned` (Achanta et al., CVPR 2009): Lab distance of each lightly blurred pixel from the
  image's mean colour.
- `boundary_contrast` (boundary prior, as in Wei et al., ECCV 2012): the image border is mostly
  background, so a pixel is salient when its Lab colour is far from most border colours (distance to
  the k-th nearest border sample, so an object touching the border does not erase itself).
`binarize` turns maps into foreground masks (Otsu's threshold or Achanta's 2 x mean), and
`centre_prior_mask` is the baseline every method must beat: a centred ellipse.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

SaliencyMethod = Callable[[torch.Tensor], torch.Tensor]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with reflect padding (kernel radius 3 sigma)."""
    radius = max(1, math.ceil(3.0 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """CIE Lab (D65) of sRGB (B, 3, H, W) in [0, 1]: L in [0, 100], a and b roughly in [-128, 127]."""
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    matrix = torch.tensor([[0.4124 / 0.95047, 0.3576 / 0.95047, 0.1805 / 0.95047],
                           [0.2126, 0.7152, 0.0722],
                           [0.0193 / 1.08883, 0.1192 / 1.08883, 0.9505 / 1.08883]],
                          device=rgb.device, dtype=rgb.dtype)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    return torch.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]),
                        200.0 * (f[:, 1] - f[:, 2])], dim=1)


def normalize_maps(saliency: torch.Tensor) -> torch.Tensor:
    """Stretch each (H, W) map of a (B, H, W) batch to [0, 1] (a flat map becomes all zeros)."""
    flat = saliency.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1)
    high = flat.max(1).values.view(-1, 1, 1)
    return (saliency - low) / (high - low).clamp_min(1e-12)


def spectral_residual(rgb: torch.Tensor) -> torch.Tensor:
    """Hou & Zhang 2007 on the luminance: |IFFT(exp(residual log-amplitude + i phase))|^2, blurred.

    It fires on what breaks the image's regularity: an object's outline and corners more than its
    inside, so binarized it covers large objects poorly (a "proto-object" detector).
    """
    gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).float()
    spectrum = torch.fft.fft2(gray)
    log_amplitude = torch.log(spectrum.abs() + 1e-8)
    # The spectrum is periodic, so its 3x3 local average wraps around (circular padding).
    local_mean = F.avg_pool2d(F.pad(log_amplitude[:, None], (1, 1, 1, 1), mode="circular"), 3, 1)[:, 0]
    residual = torch.polar(torch.exp(log_amplitude - local_mean), torch.angle(spectrum))
    saliency = torch.fft.ifft2(residual).abs() ** 2
    sigma = rgb.shape[-1] / 24.0  # Hou & Zhang blur their 64-pixel maps with sigma of a few pixels
    return normalize_maps(gaussian_blur(saliency[:, None], sigma)[:, 0])


def frequency_tuned(rgb: torch.Tensor) -> torch.Tensor:
    """Achanta et al. 2009: Lab distance of each blurred pixel from the mean Lab colour of the image."""
    lab = rgb_to_lab(rgb.float())
    blurred = gaussian_blur(lab, sigma=max(1.0, rgb.shape[-1] / 64.0))
    mean = lab.mean(dim=(2, 3), keepdim=True)
    return normalize_maps((blurred - mean).norm(dim=1))


def boundary_contrast(rgb: torch.Tensor, *, border_samples: int = 64,
                      nearest_fraction: float = 0.1) -> torch.Tensor:
    """Boundary prior: Lab distance of each pixel to its k-th nearest border colour (k = 10 % of them).

    The border (`border_samples` pixels spread evenly over a 2-pixel frame) stands for the
    background; taking the k-th nearest border colour, not the nearest, keeps an object that
    touches the border salient. Cost: (S*S) x border_samples distances per image.
    """
    lab = gaussian_blur(rgb_to_lab(rgb.float()), sigma=max(1.0, rgb.shape[-1] / 64.0))
    batch, _, height, width = lab.shape
    frame = torch.ones(height, width, dtype=torch.bool, device=lab.device)
    frame[2:-2, 2:-2] = False
    index = frame.flatten().nonzero()[:, 0]
    pick = torch.linspace(0, len(index) - 1, min(border_samples, len(index)), device=lab.device)
    border = lab.flatten(2)[:, :, index[pick.round().long()]].transpose(1, 2)  # (B, K, 3)
    distances = torch.cdist(lab.flatten(2).transpose(1, 2), border)  # (B, H*W, K)
    k = max(1, int(nearest_fraction * border.shape[1]))
    saliency = distances.topk(k, dim=2, largest=False).values[..., -1].view(batch, height, width)
    return normalize_maps(gaussian_blur(saliency[:, None], sigma=max(1.0, width / 64.0))[:, 0])


METHODS: dict[str, SaliencyMethod] = {
    "spectral_residual": spectral_residual,
    "frequency_tuned": frequency_tuned,
    "boundary_contrast": boundary_contrast,
}
"""Saliency methods by the name `relic-fast masks --method` takes."""


def otsu_threshold(saliency: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Per-map Otsu threshold of a (B, H, W) batch in [0, 1]: the split maximizing between-class variance."""
    batch = saliency.shape[0]
    index = (saliency.flatten(1).float() * (bins - 1)).round().long().clamp(0, bins - 1)
    histogram = torch.zeros(batch, bins, device=saliency.device).scatter_add_(
        1, index, torch.ones_like(index, dtype=torch.float32))
    p = histogram / histogram.sum(1, keepdim=True)
    levels = torch.arange(bins, device=saliency.device, dtype=torch.float32)
    omega = p.cumsum(1)
    mu = (p * levels).cumsum(1)
    between = (mu[:, -1:] * omega - mu) ** 2 / (omega * (1.0 - omega)).clamp_min(1e-12)
    return (between.argmax(1).float() + 0.5) / (bins - 1)


def thresholds(saliency: torch.Tensor, rule: str = "otsu") -> torch.Tensor:
    """Per-map cut (B,) of a (B, H, W) batch in [0, 1]: Otsu's threshold, or twice the map's mean
    (`"adaptive"`, Achanta et al.'s rule)."""
    if rule == "otsu":
        return otsu_threshold(saliency)
    if rule == "adaptive":
        return (2.0 * saliency.flatten(1).mean(1)).clamp(max=0.99)
    raise ValueError(f"threshold must be 'otsu' or 'adaptive', got {rule!r}")


def binarize(saliency: torch.Tensor, rule: str = "otsu") -> torch.Tensor:
    """Foreground masks (B, H, W) bool: saliency above the per-map cut of `thresholds`."""
    return saliency > thresholds(saliency, rule).view(-1, 1, 1)


def centre_prior_mask(height: int, width: int, area: float = 0.25) -> torch.Tensor:
    """Baseline: a centred ellipse with the image's aspect covering `area` of it, (H, W) bool."""
    scale = math.sqrt(4.0 * area / math.pi)  # ellipse area = pi * (scale*W/2) * (scale*H/2)
    y = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2.0) / (scale * height / 2.0)
    x = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2.0) / (scale * width / 2.0)
    return (y[:, None] ** 2 + x[None, :] ** 2) <= 1.0
