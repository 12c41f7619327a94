"""An ImageNet-shaped miniature in the layout of Kaggle's download (the `imagenet_kaggle` fixture).

    ROOT/LOC_synset_mapping.txt                         `<wnid> <description>`, one class a line (4 here;
                                                        the last one has no images anywhere)
    ROOT/LOC_val_solution.csv                           `ImageId,PredictionString`, the wnid first
    ROOT/ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG   3 wnids x 3 images
    ROOT/ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_0000000<n>.JPEG   flat, 2 per wnid (6)
    ROOT/ILSVRC/Data/CLS-LOC/test/ILSVRC2012_test_0000000<n>.JPEG flat, unlabelled (2)

Images are 24 px JPEGs, one colour per class with a little noise, so a probe can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
"""The classes with images (train folders, val rows), in sorted order: their train indices."""

MAPPING = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
           "n01484850": "great white shark, white shark", "n01491361": "tiger shark, Galeocerdo cuvieri"}

COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


@dataclass(frozen=True)
class KaggleImageNet:
    """Paths of the miniature and the truth about it."""

    root: Path
    """The download's root (the CSV and the synset mapping)."""
    cls_loc: Path
    """`ROOT/ILSVRC/Data/CLS-LOC`: what `linear-eval --data` takes."""
    solution: Path
    mapping: Path
    val_labels: dict[str, str] = field(default_factory=dict)
    """{val image file name: wnid}."""

    @property
    def train(self) -> Path:
        return self.cls_loc / "train"

    @property
    def val(self) -> Path:
        return self.cls_loc / "val"

    @property
    def test(self) -> Path:
        return self.cls_loc / "test"


def _jpeg(path: Path, colour: tuple[int, int, int], seed: int, size: int = 24) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour)[None, None] + rng.integers(-25, 26, (size, size, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="JPEG", quality=90)


def write_imagenet_kaggle(root: Path, train_per_class: int = 3, val_per_class: int = 2,
                          test_images: int = 2) -> KaggleImageNet:
    """Write the miniature under `root` (see the module docstring) and describe it."""
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    seed = 0
    for index, wnid in enumerate(WNIDS):
        for n in range(train_per_class):
            seed += 1
            _jpeg(cls_loc / "train" / wnid / f"{wnid}_{n + 1}.JPEG", COLOURS[index], seed)
    val_labels = {}
    rows = ["ImageId,PredictionString"]
    for n in range(val_per_class * len(WNIDS)):
        index = (n * 2 + n // len(WNIDS)) % len(WNIDS)  # classes interleaved, not in file order
        name = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
        seed += 1
        _jpeg(cls_loc / "val" / name, COLOURS[index], seed)
        val_labels[name] = WNIDS[index]
        rows.append(f"ILSVRC2012_val_{n + 1:08d},{WNIDS[index]} 1 2 20 22 {WNIDS[index]} 3 3 9 9 ")
    for n in range(test_images):
        seed += 1
        _jpeg(cls_loc / "test" / f"ILSVRC2012_test_{n + 1:08d}.JPEG", COLOURS[n % len(WNIDS)], seed)
    solution = root / "LOC_val_solution.csv"
    solution.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")  # Kaggle's rows are unordered too
    mapping = root / "LOC_synset_mapping.txt"
    mapping.write_text("".join(f"{wnid} {text}\n" for wnid, text in MAPPING.items()))
    return KaggleImageNet(root, cls_loc, solution, mapping, val_labels)
