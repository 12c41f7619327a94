"""`relic-fast pack`: write a dataset (and its saliency masks) as WebDataset tar shards for DALI.

Big datasets read faster as a few large sequential files than as millions of small ones (network
file systems, spinning disks). Each shard `SHARD_DIR/shard-000000.tar`, ... holds `shard_size`
samples; a sample `<key>` is
- `<key>.jpg` (a JPEG's original bytes, never re-encoded) or `<key>.png` (a PNG's original bytes;
  BMP/TIFF/WebP are converted to PNG losslessly),
- `<key>.cls`: the label as ASCII digits,
- `<key>.mask.png`: the saliency mask, when one exists for the image.
Keys are `<8-digit sample number>_<image path without suffix, [A-Za-z0-9_-] only>`: no dots (the
reader splits key from extension at the first dot), traceable back to the source file.
Samples are shuffled (seeded) before packing, since DALI's reader only shuffles within a buffer.
Images are validated first (cached, see `dali_pipelines.validate`) and bad ones left out: one bad
file in a shard would stop training. Next to each shard goes `shard-000000.idx`, the index DALI's
`fn.readers.webdataset(index_paths=...)` reads (the `wds2idx` v1.2 format); without it DALI must
scan every tar at start-up. Beside the shards goes `classes.json`, the source's class names
(`dali_pipelines.dataset.write_shard_classes`; the reader names the `.cls` labels by it).
"""

from __future__ import annotations

import io
import os
import random
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from dali_pipelines.validate import validate_files
from dali_pipelines.dataset import WDS_CLASSES_FILE, DatasetSpec, write_shard_classes
from relic_fast.dataset_tools.index import resolve_image_source
from relic_fast.dataset_tools.masks import mask_path

SHARD_PATTERN = re.compile(r"^shard-\d{6}\.(tar|idx)$")
IDX_VERSION = "v1.2"


@dataclass
class PackReport:
    """What `pack_dataset` wrote."""

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    masks: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """(image path, reason) of files left out because they are not usable images."""
    seconds: float = 0.0


def shard_path(out: Path, number: int) -> Path:
    """`out/shard-<number, 6 digits>.tar`."""
    return Path(out) / f"shard-{number:06d}.tar"


def sample_key(number: int, image: str) -> str:
    """Key of a sample: its number and the image path stem, reduced to [A-Za-z0-9_-], 80 chars max."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(image).with_suffix("").as_posix()).strip("_")
    return f"{number:08d}_{stem[-70:]}"


def image_payload(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) to store: JPEG and PNG as they are on disk, other formats as lossless PNG."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            return "jpg", data
        if image.format == "PNG":
            return "png", data
        keep = image.mode if image.mode in ("L", "RGB", "RGBA") else "RGB"
        buffer = io.BytesIO()
        image.convert(keep).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append one regular file with fixed metadata (reproducible shards)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_wds_index(tar_path: Path, idx_path: Path) -> None:
    """Write DALI's webdataset index (wds2idx v1.2): `v1.2 <samples>`, then per sample the
    `ext offset size name` of each component, offsets being where the file data starts."""
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.isreg():
                continue
            base = member.name.rsplit("/", 1)[-1]
            dot = member.name.find(".", len(member.name) - len(base))
            key, ext = member.name[:dot], member.name[dot + 1:]
            if key != last_key:
                samples.append([])
                last_key = key
            samples[-1].append(f"{ext} {member.offset_data} {member.size} {member.name}")
    tmp = idx_path.with_name(f".{idx_path.name}.tmp")
    tmp.write_text(f"{IDX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples))
    os.replace(tmp, idx_path)


def _usable(dataset: DatasetSpec, workers: int | None, report: PackReport) -> list[int]:
    """Indices of the source's usable images; records the rejected ones in the report."""
    result = validate_files(dataset.root, dataset.files, workers=workers)
    report.rejected = result.rejected(dataset.files)
    return [i for i, check in enumerate(result.checks) if check.reason is None]


def _write_shard(target: Path, samples: list[tuple[str, Path, int, Path | None]],
                 on_progress: Callable[[int], None] | None = None) -> int:
    """Write one shard (to a temporary name, then renamed) and its index; returns masks written."""
    tmp = target.with_name(f".{target.name}.tmp")
    masks = 0
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image, label, mask in samples:
            ext, data = image_payload(image)
            _add(tar, f"{key}.{ext}", data)
            _add(tar, f"{key}.cls", str(label).encode("ascii"))
            if mask is not None and mask.is_file():
                _add(tar, f"{key}.mask.png", mask.read_bytes())
                masks += 1
            if on_progress:
                on_progress(1)
    os.replace(tmp, target)
    write_wds_index(target, target.with_suffix(".idx"))
    return masks


def pack_dataset(source: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000,
                 masks: str | os.PathLike | None = None, labels: str = "", shuffle: bool = True, seed: int = 0,
                 overwrite: bool = False, workers: int | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_progress: Callable[[int], None] | None = None) -> PackReport:
    """Pack the usable images of `source` (folder tree, demo root, flat folder with its labels CSV `labels`
    or the one found by looking up, or file list) into shards under `out`, with their `classes.json`.

    `masks`: mask tree parallel to the images (default: the readers' default, e.g. a demo root's
    `masks/train`). Existing shards in `out` raise FileExistsError unless `overwrite` (then they
    are removed first, so no stale shard of an earlier run is read with the new ones).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    start = time.perf_counter()
    dataset = resolve_image_source(source, masks=str(masks or ""), labels=labels)
    mask_root = dataset.mask_root
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if SHARD_PATTERN.match(p.name) or p.name == WDS_CLASSES_FILE]
    if stale and not overwrite:
        raise FileExistsError(f"{out} already holds {len(stale)} shard files; pass overwrite to replace them")
    for path in stale:
        path.unlink()
    report = PackReport()
    order = _usable(dataset, workers, report)
    if shuffle:
        random.Random(seed).shuffle(order)
    if on_start:
        on_start(len(order))
    for number, begin in enumerate(range(0, len(order), shard_size)):
        chunk = order[begin:begin + shard_size]
        samples = [(sample_key(begin + j, dataset.files[i]), dataset.root / dataset.files[i],
                    dataset.labels[i], mask_path(mask_root, dataset.files[i]) if mask_root else None)
                   for j, i in enumerate(chunk)]
        report.masks += _write_shard(shard_path(out, number), samples, on_progress)
        report.shards.append(shard_path(out, number))
        report.samples += len(chunk)
    write_shard_classes(out, dataset.class_names)
    report.seconds = time.perf_counter() - start
    return report
