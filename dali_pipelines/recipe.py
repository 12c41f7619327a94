"""The data side's typed settings: where the dataset is, how the loader runs, and the view recipe.

These frozen dataclasses are the `data` and `views` sections of a relic-fast TOML config. They live
here, on the data side, because the pipelines consume them and `dali_pipelines` must not import the
trainer. Each field carries its documentation and is validated in `__post_init__`; a bad value
raises `InvalidField`, which names the field so the config loader can name the key and the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dali_pipelines.dataset import BUILTIN_CLASS_LISTS
from dali_pipelines.formats.registry import FORMATS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet's per-channel mean and standard deviation on [0, 1] RGB pixels: the one definition, the
defaults of `ViewsConfig.mean` / `std` and of the evaluation loaders. The torch side normalizes with
`dali_pipelines.batch.normalize_views`; DALI's ops take them through `pixel_scale`."""


def pixel_scale(values: Sequence[float]) -> np.ndarray:
    """Per-channel values given on [0, 1] pixels (`mean`, `std`) on the [0, 255] scale of the uint8 pixels DALI's
    ops compute with, as float32 (what DALI holds): the one conversion of the eval graph's fused normalize and
    the saliency blend's mean-colour and noise backgrounds."""
    return np.asarray(values, np.float32) * 255


class InvalidField(ValueError):
    """A settings field holds a value outside its documented range or choices."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def default_interpolation(device: str) -> str:
    """`views.interpolation = "auto"` on a pipeline of `device` ("cpu" or "gpu"): cubic (the paper's) on
    the GPU, where it is nearly free; linear on the CPU, where cubic is a large share of the pipeline's
    cost (docs/performance.md, the input-pipeline table)."""
    return "cubic" if device == "gpu" else "linear"


def check(condition: bool, field: str, message: str) -> None:
    """Raise `InvalidField(field, message)` unless `condition` holds (validation next to the field)."""
    if not condition:
        raise InvalidField(field, message)


def check_range(pair: tuple[float, float], field: str, low: float, high: float) -> None:
    """Check that `pair` is an ordered (min, max) range inside [low, high]."""
    check(len(pair) == 2, field, f"expected [min, max], got {list(pair)}")
    check(low <= pair[0] <= pair[1] <= high, field,
          f"expected {low} <= min <= max <= {high}, got {list(pair)}")


def check_probability(value: float, field: str) -> None:
    """Check that `value` is a probability."""
    check(0.0 <= value <= 1.0, field, f"a probability must lie in [0, 1], got {value}")


FormatName = Literal[("auto", *(dataset_format.name for dataset_format in FORMATS))]
"""`data.format`'s choices: auto, or a registered format's name (`formats.registry.FORMATS`)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how the DALI loader reads them (`[data]`)."""

    path: str = ""
    """Dataset location. A folder tree `root/<class>/<image>`, a demo-data root holding `train/`
    (its `masks/train` tree is then used for saliency), a file list (`.txt`: `relative/path label`
    per line, paths relative to the list's folder), a flat folder of images with its labels CSV
    (`val_labels`; ImageNet's validation set as Kaggle ships it) or a folder of WebDataset `.tar` shards.
    Empty: the built-in demo dataset, generated on first use. `--data` on the CLI sets it."""

    format: FormatName = "auto"
    """Reader to use; `auto` infers it from `path` (a `.txt` file: file_list; a folder of `.tar`
    files: webdataset; a folder with images and no subfolder: flat; else folder)."""

    masks: str = ""
    """Root of the saliency-mask tree parallel to the image tree (`<masks>/<same relative path
    with .png>`). Empty: `<root>/../masks/<split>` when it exists (the demo-data layout), else no
    masks. Images without a mask are never saliency-blended."""

    classes: str = ""
    """Keep only these classes in every split (pretraining, monitor, linear evaluation): a file of class
    names, one per line, or a built-in list: `imagenet100` (CMC's ImageNet-100, as solo-learn ships it).
    Indices follow the train split's class order. A listed class the train split lacks stops the run
    (exit 3, naming the file and row). Empty: every class."""

    val: str = ""
    """The labelled split the pretraining monitor scores (`pretrain --val`): a class-folder tree, a file
    list, shards, or a flat folder with its labels file (`val_labels`). Empty: `val/` inside the data
    root (the demo layout), else the `val` beside a data folder named `train` (Kaggle's ImageNet:
    `--data .../CLS-LOC/train` -> `.../CLS-LOC/val`), else none."""

    val_labels: str = ""
    """Labels CSV of a flat validation folder (`--val-labels`): a header row, then `image,class ...` rows
    (Kaggle's `LOC_val_solution.csv`: `ImageId,PredictionString`, the wnid first). Empty: look for
    `LOC_<folder>_solution.csv` in the folder and up to 4 folders above it (the Kaggle download's root)."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where DALI decodes and augments: `gpu` uses the `mixed` (nvJPEG) decoder and GPU operators,
    `cpu` a CPU-only pipeline, `auto` the GPU when CUDA is available."""

    num_threads: int = 4
    """DALI CPU worker threads per pipeline (per rank)."""

    prefetch_queue_depth: int = 2
    """Batches DALI prepares ahead of the one being consumed."""

    drop_last: bool = True
    """Drop the last incomplete batch of an epoch (True) or pad it by repeating samples (False)."""

    shuffle: bool = True
    """Shuffle samples each epoch (seeded by `train.seed`, reproducible)."""

    on_bad_file: Literal["stop", "skip"] = "stop"
    """What to do with an unreadable image met during training: `stop` with a message naming the
    file (run `relic-fast index` first), or `skip` it and count it."""

    max_image_mb: float = 64.0
    """With `on_bad_file = "skip"`: files larger than this many MB are rejected unread (as `relic-fast index
    --max-image-mb` does): no JPEG of a real dataset comes close, and a huge file named .jpg would fill memory."""

    def __post_init__(self) -> None:
        check(self.max_image_mb > 0, "max_image_mb", f"must be > 0, got {self.max_image_mb}")
        bare_name = self.classes and "/" not in self.classes and "." not in self.classes
        check(not bare_name or self.classes in BUILTIN_CLASS_LISTS, "classes",
              f"{self.classes!r} is neither a built-in class list ({', '.join(BUILTIN_CLASS_LISTS)}) nor a file "
              f"path (give e.g. ./my_classes.txt)")
        check(not self.val_labels or self.val_labels.lower().endswith(".csv"), "val_labels",
              f"expected a .csv labels file (Kaggle's LOC_val_solution.csv), got {self.val_labels!r}")
        check(self.num_threads >= 1, "num_threads", f"must be >= 1, got {self.num_threads}")
        check(self.prefetch_queue_depth >= 1, "prefetch_queue_depth",
              f"must be >= 1, got {self.prefetch_queue_depth}")


@dataclass(frozen=True)
class ViewsConfig:
    """The RELICv2 multi-view augmentation recipe (`[views]`), defaults from the paper (docs/method.md).

    Each key belongs to the view layout (`num_large`, `num_small`, and the normalization `mean`, `std`) or
    to one augmentation unit, which names it in `Augmentation.settings` (`dali_pipelines.augmentations`)."""

    num_large: int = 4
    """L: standard-size views per image; they go through the online and the target network."""

    num_small: int = 2
    """S: small views per image; online network only."""

    large_size: int = 224
    """Side of a large view in pixels."""

    small_size: int = 96
    """Side of a small view in pixels."""

    large_area: tuple[float, float] = (0.08, 1.0)
    """Range of the crop's area as a fraction of the image, large views (BYOL's code)."""

    small_area: tuple[float, float] = (0.05, 0.14)
    """Range of the crop's area as a fraction of the image, small views (to confirm)."""

    aspect_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    """Range of the crop's aspect ratio (sampled log-uniformly)."""

    flip_p: float = 0.5
    """Probability of a horizontal flip."""

    jitter_p: float = 0.8
    """Probability of colour jitter (brightness, contrast, saturation, hue)."""

    brightness: float = 0.4
    """Brightness jitter strength: add U(-b, b) (`brightness_mode = "additive"`, TF/BYOL) or
    scale by U(1-b, 1+b) (`"multiplicative"`, DALI's native op)."""

    brightness_mode: Literal["additive", "multiplicative"] = "additive"
    """Form of the brightness jitter; additive is the paper's (BYOL/TF) form."""

    contrast: float = 0.4
    """Contrast jitter: scale about each channel's image mean by U(1-c, 1+c)."""

    saturation: float = 0.2
    """Saturation jitter: scale by U(1-s, 1+s)."""

    hue: float = 0.1
    """Hue jitter: shift by U(-h, h) of the hue circle."""

    jitter_order: Literal["random", "fixed"] = "random"
    """Apply the four jitter ops in a random order per sample (the paper) or a fixed one (faster).
    Only matters with `jitter_clip = "each"`: unclipped, the four ops commute."""

    jitter_clip: Literal["each", "end"] = "end"
    """Clip after each jitter op (`each`: BYOL's exact form, four passes per view) or once at the end
    (`end`: the four ops and grayscale fused into one colour-matrix pass; without the intermediate
    clips the ops commute, so the order is moot). `end` is the default because `each` roughly doubles
    the CPU pipeline's cost (docs/performance.md, the input-pipeline table)."""

    interpolation: Literal["auto", "cubic", "linear"] = "auto"
    """Resampling filter of the crops (antialiased either way): `cubic` as the paper; `linear` is
    markedly cheaper on the CPU and differs from cubic by less than JPEG's own error (figures: the
    docs/performance.md); `auto`: cubic on the GPU, linear on the CPU."""

    grayscale_p: float = 0.2
    """Probability of converting to grayscale after the jitter."""

    blur_p: tuple[float, ...] = (1.0, 0.1)
    """Gaussian blur probability per view setting; view k uses entry k mod len (small views too)."""

    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Range of the blur's sigma in pixels."""

    solarize_p: tuple[float, ...] = (0.0, 0.2)
    """Solarization probability per view setting; view k uses entry k mod len."""

    saliency_p: float = 0.1
    """p_m: probability that a large view is cut from the background-removed image (to confirm)."""

    saliency_fill: Literal["mean", "noise", "other_image"] = "mean"
    """What replaces the background: the dataset mean colour, Gaussian noise, or another image of
    the batch."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel normalization mean (RGB, on [0, 1] pixels)."""

    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel normalization standard deviation."""

    def __post_init__(self) -> None:
        check(self.num_large >= 1, "num_large", f"need at least one large view, got {self.num_large}")
        check(self.num_small >= 0, "num_small", f"must be >= 0, got {self.num_small}")
        for name in ("large_size", "small_size"):
            check(getattr(self, name) >= 8, name, f"must be >= 8 pixels, got {getattr(self, name)}")
        check_range(self.large_area, "large_area", 0.0, 1.0)
        check_range(self.small_area, "small_area", 0.0, 1.0)
        check_range(self.aspect_ratio, "aspect_ratio", 1e-3, 1e3)
        for name in ("flip_p", "jitter_p", "grayscale_p", "saliency_p"):
            check_probability(getattr(self, name), name)
        for name in ("blur_p", "solarize_p"):
            values = getattr(self, name)
            check(len(values) >= 1, name, "needs at least one per-view setting")
            for value in values:
                check_probability(value, name)
        check(0.0 <= self.brightness < 1.0, "brightness", f"expected [0, 1), got {self.brightness}")
        check(0.0 <= self.contrast < 1.0, "contrast", f"expected [0, 1), got {self.contrast}")
        check(0.0 <= self.saturation < 1.0, "saturation", f"expected [0, 1), got {self.saturation}")
        check(0.0 <= self.hue <= 0.5, "hue", f"expected [0, 0.5], got {self.hue}")
        check(self.jitter_clip in ("each", "end"), "jitter_clip", f"expected each or end, got {self.jitter_clip!r}")
        check(self.interpolation in ("auto", "cubic", "linear"), "interpolation",
              f"expected auto, cubic or linear, got {self.interpolation!r}")
        check_range(self.blur_sigma, "blur_sigma", 0.0, 100.0)
        check(all(s > 0 for s in self.std), "std", f"must be positive, got {list(self.std)}")

    @property
    def num_views(self) -> int:
        """L + S: the number of views the online network sees per image."""
        return self.num_large + self.num_small

    def view_setting(self, view_index: int) -> tuple[float, float]:
        """(blur_p, solarize_p) of view `view_index` (large views first, then small ones)."""
        return view_entry(self.blur_p, view_index), view_entry(self.solarize_p, view_index)

    def view_specs(self) -> list["ViewSpec"]:
        """Every view's fixed settings, large views first (the pipeline's output order)."""
        return [ViewSpec(index=index, large=index < self.num_large,
                         size=self.large_size if index < self.num_large else self.small_size)
                for index in range(self.num_views)]

    def replace(self, **changes) -> "ViewsConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ViewSpec:
    """One view's place in the recipe, fixed when the pipeline's graph is built (its per-sample draws are
    the pipeline's `draws.ViewDraws`). An augmentation reads its own per-view settings from the `ViewsConfig`
    with `index` (`view_entry`); a Python `if` on them chooses which operators the graph holds."""

    index: int
    """Position of the view in the output order: large views first, then small ones."""

    large: bool
    """A large view: seen by both networks and the only kind that can be saliency-blended."""

    size: int
    """Side of the view in pixels."""


def view_entry(values: tuple[float, ...], view_index: int) -> float:
    """View `view_index`'s entry of a per-view setting such as `blur_p`: entry k mod len, so the settings
    alternate over the views (small views continue the alternation)."""
    return values[view_index % len(values)]
