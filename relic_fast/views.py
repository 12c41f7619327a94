"""`relic-fast views`: the views the trainer would get, as a picture, each with what was drawn for it.

DALI users debug augmentations by looking. One row per image: the image and its saliency mask, then every
large and small view exactly as the loader emits it (uint8 HWC, before normalization), each captioned with
its draws read from the pipeline's debug statistics (`ViewBatch.stats`): the crop window (flipped or not),
and whether jitter, grayscale, blur (with its sigma), solarize and the saliency blend were applied. The views
come from the run's own loader (`build_pretrain_loader`, its device: the CPU or the GPU graph), reading the
images in dataset order, so row i is image i of the dataset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from dali_pipelines.dataset import DatasetError, DatasetSpec, resolve_dataset
from dali_pipelines.formats.base import mask_file
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.pretrain import STATS_FIELDS
from relic_fast.config import Config
from relic_fast.data_plan import check_saliency_masks
from relic_fast.demo_data import ensure_demo_dataset
from relic_fast.run_plan import resolve_plan

CELL = 160
"""Side of a picture cell in pixels: the image, its mask and the large views fill it; small views keep their
size relative to the large ones."""
LINE = 12
"""Height of a caption line in pixels."""
CAPTION_LINES = 4


@dataclass(frozen=True)
class ViewSheet:
    """What `write_views` drew: the picture's grid, every view's caption and the statistics they come from."""

    path: Path
    rows: int
    """Images, one row each."""
    columns: int
    """2 (the image, its mask) + L large + S small views."""
    captions: list[list[str]]
    """captions[i][k]: view k of image i, large views first."""
    stats: np.ndarray
    """(rows, L + S, len(STATS_FIELDS)) the pipeline's debug statistics (`pretrain.STATS_FIELDS`)."""
    files: list[str]
    """The dataset entry of each row."""


def caption(name: str, stats: np.ndarray) -> str:
    """A view's caption from its row of debug statistics: its name, the crop window in relative coordinates
    (x start > x end when flipped), then each augmentation's decision; the blur's sigma where it blurred."""
    s = dict(zip(STATS_FIELDS, stats.tolist()))
    flipped = s["flip"] > 0
    window = f"y {s['y0']:.2f}-{s['y1']:.2f} x {s['x0']:.2f}-{s['x1']:.2f}"
    blur = f"blur {s['sigma']:.2f}" if s["blur"] > 0 else "blur no"
    return "\n".join([f"{name}{', flipped' if flipped else ''}", window,
                      f"jitter {yes(s['jitter'])}, gray {yes(s['gray'])}",
                      f"{blur}, sol {yes(s['solarize'])}, sal {yes(s['saliency'])}"])


def yes(flag: float) -> str:
    return "yes" if flag > 0 else "no"


def views_dataset(config: Config) -> DatasetSpec:
    """The run's training images (the built-in demo data when `data.path` is empty), as image files."""
    data = config.data
    dataset = resolve_dataset(data.path or str(ensure_demo_dataset()), data.format, data.masks, classes=data.classes)
    if not dataset.format.image_files:
        raise DatasetError(f"relic-fast views shows image files next to their views; {dataset.root} holds "
                           f"{dataset.format.description}: give the folder tree or file list they were packed from")
    check_saliency_masks(dataset, config.views)
    return dataset


def draw_batch(config: Config, dataset: DatasetSpec, images: int):
    """One debug batch of the first `images` images, in dataset order, from the run's own loader."""
    loader = build_pretrain_loader(dataset, config.views, dataclasses.replace(config.data, shuffle=False),
                                   batch_size=images, seed=config.train.seed,
                                   device_id=resolve_plan(config).dali_device_id, debug=True)
    batch = next(iter(loader))
    if batch.labels.tolist() != list(dataset.labels[:images]):  # row i must be image i
        raise RuntimeError("the loader did not read the images in dataset order")
    return batch


def as_rows(views, count: int) -> np.ndarray:
    """(count * B, 3, H, W) view-major uint8 views -> (B, count, H, W, 3) numpy."""
    x = views.cpu().permute(0, 2, 3, 1)
    return x.reshape(count, -1, *x.shape[1:]).transpose(0, 1).numpy()


def fit(image: Image.Image, side: int) -> Image.Image:
    """`image` scaled to fit a `side` square, aspect kept."""
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def source_panels(dataset: DatasetSpec, entry: str) -> tuple[Image.Image, Image.Image | None]:
    """The image as decoded (EXIF orientation applied) and its mask, None without one."""
    image = ImageOps.exif_transpose(Image.open(dataset.root / entry)).convert("RGB")
    mask_path = mask_file(dataset.mask_root, entry) if dataset.mask_root is not None else None
    mask = Image.open(mask_path).convert("L") if mask_path is not None and mask_path.exists() else None
    return image, mask


def write_views(config: Config, out: Path, images: int = 4) -> ViewSheet:
    """Draw the views of the first `images` images of the run's data into the PNG `out` (see the module docstring)."""
    dataset = views_dataset(config)
    images = min(images, dataset.num_samples)
    batch = draw_batch(config, dataset, images)
    views = config.views
    large = as_rows(batch.large, views.num_large)
    small = as_rows(batch.small, views.num_small) if views.num_small else np.zeros((images, 0, 1, 1, 3), np.uint8)
    stats = batch.stats.cpu().numpy()
    names = [f"large {k}" for k in range(views.num_large)] + [f"small {k}" for k in range(views.num_small)]
    captions = [[caption(name, stats[i, k]) for k, name in enumerate(names)] for i in range(images)]
    columns = 2 + views.num_views
    height = CELL + LINE * CAPTION_LINES
    sheet = Image.new("RGB", (columns * CELL, images * height), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    scale = CELL / views.large_size
    for i in range(images):
        entry = dataset.files[i]
        image, mask = source_panels(dataset, entry)
        panels = [(fit(image, CELL), f"{Path(entry).name}\n{image.width}x{image.height}"),
                  (fit(mask, CELL), "mask") if mask is not None else (None, "no mask")]
        for k in range(views.num_views):
            pixels = large[i, k] if k < views.num_large else small[i, k - views.num_large]
            side = max(1, round(pixels.shape[0] * scale))
            panels.append((Image.fromarray(pixels).resize((side, side), Image.NEAREST), captions[i][k]))
        for column, (panel, text) in enumerate(panels):
            x, y = column * CELL, i * height
            if panel is not None:
                sheet.paste(panel, (x + (CELL - panel.width) // 2, y + (CELL - panel.height) // 2))
            draw.multiline_text((x + 3, y + CELL + 1), text, fill="black", font=font, spacing=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return ViewSheet(out, images, columns, captions, stats, [dataset.files[i] for i in range(images)])
