"""Tiny datasets for the pipeline tests: the same images as a folder tree, a file list and WebDataset shards.

(Imported by conftest.py's fixtures and by the tests; a module name of its own because the test
folders are not packages.)

Identity images: 32x32 squares of one colour per sample (`sample_colour(i)`), PNG so every pixel
survives exactly, with a saliency mask whose foreground is the left `mask_width(i)` columns; every
fourth sample has no mask. The colour names the image and the mask width names the mask, so a test
can tell whether an image met its own mask. Pattern images (ramp / stripes / constant channels) make
flip, grayscale, blur and solarize visible. The fixtures return paths; tests resolve them.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 32
CLASSES = ("alpha", "beta", "gamma")


def sample_colour(index: int) -> tuple[int, int, int]:
    """A distinct RGB colour per sample index (0..63), far from the mean-colour fill (124, 116, 104)."""
    return (20 + 3 * index, 230 - 3 * index, 30 + (index * 37) % 64)


def mask_width(index: int) -> int:
    """Foreground columns of sample `index`'s saliency mask."""
    return 4 + 4 * (index % 6)


def has_mask(index: int) -> bool:
    return index % 4 != 3


def identity_image(index: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(sample_colour(index), np.uint8), (SIDE, SIDE, 3)).copy()


def identity_mask(index: int) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[:, :mask_width(index)] = 255
    return mask


def pattern_image() -> np.ndarray:
    """R: left-to-right ramp 20..120 (flip; below the solarize threshold), G: 1-px stripes 20/110 (blur),
    B: constant 200 (solarize)."""
    image = np.empty((SIDE, SIDE, 3), np.uint8)
    image[..., 0] = np.linspace(20, 120, SIDE).round().astype(np.uint8)[None, :]
    image[..., 1] = np.where(np.arange(SIDE) % 2 == 0, 20, 110).astype(np.uint8)[None, :]
    image[..., 2] = 200
    return image


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Layouts:
    """One set of samples in every reader format."""

    folder: Path
    file_list: Path
    shards: Path
    masks: Path
    count: int


def write_layouts(root: Path, images: list[np.ndarray], masks: list[np.ndarray | None],
                  suffix: str = ".png", shards: int = 2, label_of=None) -> Layouts:
    """Write `images` (and masks) as root/train/<class>/<name>, root/masks/train/..., a file list
    root/train/list.txt in folder order, and `shards` tar files root/shards/shard-N.tar in that order."""
    folder, mask_root, shard_dir = root / "train", root / "masks" / "train", root / "shards"
    entries = []
    for index, (image, mask) in enumerate(zip(images, masks)):
        label = label_of(index) if label_of else index % len(CLASSES)
        relative = f"{CLASSES[label % len(CLASSES)]}/{index:03d}{suffix}"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / relative, **({"quality": 95} if suffix == ".jpg" else {}))
        if mask is not None:
            (mask_root / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save((mask_root / relative).with_suffix(".png"))
        entries.append((relative, label, mask))
    entries.sort(key=lambda e: e[0])  # folder order: sorted class folders, sorted files
    (folder / "list.txt").write_text("".join(f"{rel} {label}\n" for rel, label, _ in entries))
    shard_dir.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(entries) // shards)
    for number in range(shards):
        with tarfile.open(shard_dir / f"shard-{number:06d}.tar", "w") as tar:
            for rel, label, mask in entries[number * per_shard:(number + 1) * per_shard]:
                key = rel.replace("/", "_").rsplit(".", 1)[0]
                members = [(f"{key}{suffix}", (folder / rel).read_bytes()), (f"{key}.cls", str(label).encode())]
                if mask is not None:
                    members.append((f"{key}.mask.png", png_bytes(mask)))
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return Layouts(folder, folder / "list.txt", shard_dir, mask_root, len(images))
