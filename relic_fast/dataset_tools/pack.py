"""`relic-fast pack`: write a dataset (and its saliency masks) as WebDataset tar shards for DALI.

Big datasets read faster as a few large sequential files than as millions of small ones (network
file systems, spinning disks). Each shard `SHARD_DIR/shard-000000.tar`, ... holds `shard_size`
samples; a sample `<key>` is
- `<key>.jpg` (a JPEG's original bytes, never re-encoded) or `<key>.png` (a PNG's original bytes;
  BMP/TIFF/WebP are converted to PNG losslessly),
- `<key>.cls`: the label as ASCII digits,
- `<key>.mask.png`: the saliency mask, when one exists for the image.
Keys are `<8-digit sample number>_<image path without suffix, [A-Za-z0-9_-] only>`: no dots (the key
rule, `dali_pipelines.formats.shards.scan_tar`, ends a key at the first dot), traceable back to the source file.
Samples are shuffled (seeded) before packing, since DALI's reader only shuffles within a buffer.
Images are validated first (cached, see `dali_pipelines.validate`) and bad ones left out: one bad
file in a shard would stop training. Next to each shard goes `shard-000000.idx`, the index DALI's
`fn.readers.webdataset(index_paths=...)` reads (`dali_pipelines.formats.shard_index.write_wds_index`, the
readers' own key rule and index writer); without it DALI must scan every tar at start-up. Beside the shards
goes `classes.json`, the source's class names (`dali_pipelines.formats.shards.write_shard_classes`; the
reader names the `.cls` labels by it), and last `manifest.json`
(`dali_pipelines.formats.shards.write_shard_manifest`): per shard its sample count, size, mtime and SHA-256
and its index's, which the reader checks at every resolve.

A set is written whole or not at all: everything goes into a hidden folder beside OUT
(`.OUT.packing-*`), which replaces OUT only once complete (renames; the old set is removed after). A
pack that fails leaves the old set as it was and removes its folder; one killed outright (SIGKILL,
power loss) leaves the hidden folder behind, never a partial set at OUT. Since OUT is replaced as a
whole, it must be new, empty or hold only an earlier pack's files.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import secrets
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image

from dali_pipelines.atomic import replace_folder, write_atomically
from dali_pipelines.dataset import DatasetSpec, mask_file
from dali_pipelines.formats.shard_index import write_wds_index
from dali_pipelines.formats.shards import (WDS_CLASSES_FILE, WDS_MANIFEST_FILE, ShardRecord, write_shard_classes,
                                           write_shard_manifest)
from dali_pipelines.validate import validate_files
from relic_fast.dataset_tools.index import resolve_image_source

SHARD_PATTERN = re.compile(r"^shard-\d{6}\.(tar|idx)$")


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


def _usable(dataset: DatasetSpec, workers: int | None, report: PackReport) -> list[int]:
    """Indices of the source's usable images; records the rejected ones in the report."""
    result = validate_files(dataset.root, dataset.files, workers=workers)
    report.rejected = result.rejected(dataset.files)
    return [i for i, check in enumerate(result.checks) if check.reason is None]


def _write_shard(target: Path, samples: list[tuple[str, Path, int, Path | None]],
                 on_progress: Callable[[int], None] | None = None) -> int:
    """Write one shard (`write_atomically`) and its index (`write_wds_index`); returns masks written."""
    masks = 0

    def write(handle) -> None:
        nonlocal masks
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, image, label, mask in samples:
                ext, data = image_payload(image)
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", str(label).encode("ascii"))
                if mask is not None and mask.is_file():
                    _add(tar, f"{key}.mask.png", mask.read_bytes())
                    masks += 1
                if on_progress:
                    on_progress(1)

    write_atomically(target, write)
    write_wds_index(target, target.with_suffix(".idx"))
    return masks


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in the manifest for audits after a copy)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def shard_record(tar: Path, samples: int) -> ShardRecord:
    """The manifest's record of a finished shard and its `.idx`: sizes, mtimes (the reader's cheap check
    that the index still matches the tar) and SHA-256s (a re-read of what was just written, from the
    page cache: minutes for 140 GB, next to the hours the validation and copying take)."""
    index = tar.with_suffix(".idx")
    tar_info, index_info = tar.stat(), index.stat()
    return ShardRecord(tar.name, samples, tar_info.st_size, tar_info.st_mtime_ns, file_sha256(tar), index.name,
                       index_info.st_size, index_info.st_mtime_ns, file_sha256(index))


def _is_pack_output(name: str) -> bool:
    """Whether a file name in OUT is one `pack_dataset` writes (shards, indexes, classes, manifest)."""
    return bool(SHARD_PATTERN.match(name)) or name in (WDS_CLASSES_FILE, WDS_MANIFEST_FILE)


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """FileExistsError unless OUT can be replaced by a new set: absent, empty, or holding only an earlier
    pack's files (and `overwrite`). Other files would be lost with the folder, so they are refused."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    entries = sorted(p.name for p in out.iterdir())
    foreign = [name for name in entries if not _is_pack_output(name)]
    if foreign:
        raise FileExistsError(f"{out} holds {foreign[0]} ({len(foreign)} files relic-fast pack did not write); "
                              f"pack into a new or empty folder, since the folder is replaced as a whole")
    if entries and not overwrite:
        raise FileExistsError(f"{out} already holds {len(entries)} shard files; pass overwrite to replace them")


def pack_dataset(source: str | os.PathLike, out: str | os.PathLike, *, shard_size: int = 1000,
                 masks: str | os.PathLike | None = None, labels: str = "", shuffle: bool = True, seed: int = 0,
                 overwrite: bool = False, workers: int | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_progress: Callable[[int], None] | None = None) -> PackReport:
    """Pack the usable images of `source` (folder tree, demo root, flat folder with its labels CSV `labels`
    or the one found by looking up, or file list) into shards under `out`, with `classes.json` and `manifest.json`.

    `masks`: mask tree parallel to the images (default: the readers' default, e.g. a demo root's
    `masks/train`). Existing shards in `out` raise FileExistsError unless `overwrite`; so do files
    `pack` does not write. The new set is written into a hidden folder beside `out` and replaces `out`
    only when complete (module docstring): a pack that stops half-way leaves the old set readable, and
    no stale shard of an earlier run is ever read with the new ones.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    start = time.perf_counter()
    dataset = resolve_image_source(source, masks=str(masks or ""), labels=labels)
    mask_root = dataset.mask_root
    out = Path(out).expanduser().resolve()  # a symlinked OUT: replace the folder it points to, not the link
    _check_replaceable(out, overwrite)
    report = PackReport()
    order = _usable(dataset, workers, report)
    if shuffle:
        random.Random(seed).shuffle(order)
    if on_start:
        on_start(len(order))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.packing-{secrets.token_hex(4)}")  # same file system: renames work
    staging.mkdir()
    try:
        records = []
        for number, begin in enumerate(range(0, len(order), shard_size)):
            chunk = order[begin:begin + shard_size]
            samples = [(sample_key(begin + j, dataset.files[i]), dataset.root / dataset.files[i],
                        dataset.labels[i], mask_file(mask_root, dataset.files[i]) if mask_root else None)
                       for j, i in enumerate(chunk)]
            report.masks += _write_shard(shard_path(staging, number), samples, on_progress)
            records.append(shard_record(shard_path(staging, number), len(chunk)))
            report.shards.append(shard_path(out, number))
            report.samples += len(chunk)
        write_shard_classes(staging, dataset.class_names)
        write_shard_manifest(staging, records)  # last: a folder with a manifest is complete
        _check_replaceable(out, overwrite)  # again: another process may have written into OUT meanwhile
        replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - start
    return report
