"""The files of a WebDataset shard set: a shard's samples (`scan_tar`, the one key rule), the set's class names
(`classes.json`) and its manifest (`manifest.json`), which `relic-fast pack` writes and every resolve checks.

The class names are in `classes.json` beside the shards (`relic-fast pack` writes it: `{"format": "relic-fast
classes", "version": 1, "classes": [...]}`); shards without it name their classes "0".."N-1". `relic-fast pack`
also writes `manifest.json` (`write_shard_manifest`: each shard's name, samples, bytes, mtime and SHA-256, and its
`.idx`'s), checked at every resolve (`check_shard_manifest`: a shard missing, one not listed, or a size or sample
count that differs is a `DatasetError` naming the shard). A folder without a manifest is read unchecked with one
warning (third-party shards), unless its `classes.json` says `relic-fast pack` wrote it: then the manifest was
lost and the set is refused.
"""

from __future__ import annotations

import json
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dali_pipelines.atomic import write_text_atomically
from dali_pipelines.formats.base import DatasetError

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")
"""Extensions of the image member of a WebDataset sample."""

WDS_LABEL_EXTENSION = "cls"
WDS_MASK_EXTENSION = "mask.png"

WDS_CLASSES_FILE = "classes.json"
"""Beside the shards: the shard set's class names (`write_shard_classes`)."""

WDS_CLASSES_FORMAT = "relic-fast classes"
"""The `format` of a `classes.json` that `relic-fast pack` wrote (which tells its manifest was lost)."""

WDS_MANIFEST_FILE = "manifest.json"
"""Beside the shards `relic-fast pack` wrote: what the set holds (`write_shard_manifest`)."""

WDS_MANIFEST_FORMAT = "relic-fast shards"
WDS_MANIFEST_VERSION = 1
"""The manifest version this module writes (and the newest it reads)."""

def scan_tar(path: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Samples of one shard: (key, {extension: member}) for consecutive regular files sharing a key.

    The one key rule of every WebDataset reader and writer here (the dataset scan, the indexes the readers
    and `relic-fast pack` write, the mask count, the names of bad files): the key is the member's name up to
    the first dot of its base name, the extension the rest in lower case (DALI's `wds2idx` rule, with `.JPG`
    read as `jpg` so that DALI finds it among `WDS_IMAGE_EXTENSIONS`). A member whose base name has no dot,
    or starts with one, belongs to no sample and is passed over. Samples without an image are kept here;
    callers decide (`image_member`)."""
    samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            slash = member.name.rfind("/") + 1
            dot = member.name.find(".", slash)
            if dot <= slash:
                continue
            key, ext = member.name[:dot], member.name[dot + 1:].lower()
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = member
    return samples


def image_member(members: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    """The image of a sample (`scan_tar`'s {extension: member}), or None: a sample without one is not read."""
    return next((members[e] for e in WDS_IMAGE_EXTENSIONS if e in members), None)


def write_shard_classes(folder: Path, class_names: Sequence[str]) -> Path:
    """Record a shard set's class names in `folder/classes.json` (`write_text_atomically`)."""
    path = Path(folder) / WDS_CLASSES_FILE
    document = {"format": WDS_CLASSES_FORMAT, "version": 1, "classes": list(class_names)}
    write_text_atomically(path, json.dumps(document, indent=1) + "\n")
    return path


def _read_json(path: Path):
    """The JSON document in `path`, None when there is no such file; a `DatasetError` naming it when it is not JSON."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON: {err}") from None


def read_shard_classes(folder: Path) -> list[str] | None:
    """The class names in `folder/classes.json`, or None when the shard set records none."""
    path = Path(folder) / WDS_CLASSES_FILE
    data = _read_json(path)
    if data is None:
        return None
    names = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DatasetError(f"{path}: expected {{\"classes\": [\"name\", ...]}}")
    return names


@dataclass(frozen=True)
class ShardRecord:
    """What the manifest records of one shard: enough to tell that the shard (and its `.idx`) is the one
    `relic-fast pack` wrote. Sizes and sample counts are checked at every resolve (a stat, and the scan
    that counts the labels anyway); size and mtime also decide whether the `.idx` beside the tar still
    matches it (`shard_index.wds_indexes`); the SHA-256s are for a full audit after a copy
    (`sha256sum`), too slow to recompute at every start of a 140 GB set."""

    name: str
    """File name of the tar (`shard-000000.tar`), in the manifest's folder."""
    samples: int
    """Samples with an image in the tar."""
    size: int
    mtime_ns: int
    sha256: str
    index_name: str
    """File name of its DALI index (`shard-000000.idx`)."""
    index_size: int
    index_mtime_ns: int
    index_sha256: str


@dataclass(frozen=True)
class ShardManifest:
    """A shard set's `manifest.json`: its shards in order and the file naming its classes."""

    path: Path
    shards: list[ShardRecord]
    classes_file: str
    """File name (in the same folder) of the class names: `classes.json`, the one place they are kept."""

    def record(self, name: str) -> ShardRecord | None:
        """The record of the tar named `name`, or None when the manifest does not list it."""
        return next((r for r in self.shards if r.name == name), None)


def write_shard_manifest(folder: Path, shards: Sequence[ShardRecord], classes_file: str = WDS_CLASSES_FILE) -> Path:
    """Write `folder/manifest.json` (`write_text_atomically`): format, version, the classes file,
    the total sample count and per shard its record (`ShardRecord`), so a reader can tell a complete set
    from a partial or altered one."""
    path = Path(folder) / WDS_MANIFEST_FILE
    shard_entries = [{"name": r.name, "samples": r.samples, "bytes": r.size, "mtime_ns": r.mtime_ns,
                      "sha256": r.sha256, "index": {"name": r.index_name, "bytes": r.index_size,
                                                    "mtime_ns": r.index_mtime_ns, "sha256": r.index_sha256}}
                     for r in shards]
    document = {"format": WDS_MANIFEST_FORMAT, "version": WDS_MANIFEST_VERSION, "classes": classes_file,
                "samples": sum(r.samples for r in shards), "shards": shard_entries}
    write_text_atomically(path, json.dumps(document, indent=1) + "\n")
    return path


def _manifest_fields_ok(entry, suffix: str) -> bool:
    """Whether a manifest entry (a shard, or its `index`) is a dict with a plain file name ending in `suffix`
    (no folder part), non-negative integer sizes and counts, and a SHA-256 string."""
    if not isinstance(entry, dict):
        return False
    name, numbers = entry.get("name"), [entry.get(k) for k in ("bytes", "mtime_ns")]
    if suffix == ".tar":
        numbers.append(entry.get("samples"))
    return (isinstance(name, str) and name.endswith(suffix) and "/" not in name and isinstance(entry.get("sha256"), str)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers))


def _shard_record(path: Path, entry) -> ShardRecord:
    """One manifest entry as a `ShardRecord`; a `DatasetError` naming the manifest when it is malformed."""
    if not (_manifest_fields_ok(entry, ".tar") and _manifest_fields_ok(entry.get("index"), ".idx")):
        raise DatasetError(f"{path}: malformed shard entry {json.dumps(entry)[:200]} (expected name, samples, bytes, "
                           f"mtime_ns, sha256 and index {{name, bytes, mtime_ns, sha256}})")
    index = entry["index"]
    return ShardRecord(entry["name"], entry["samples"], entry["bytes"], entry["mtime_ns"], entry["sha256"],
                       index["name"], index["bytes"], index["mtime_ns"], index["sha256"])


def read_shard_manifest(folder: Path) -> ShardManifest | None:
    """The manifest in `folder/manifest.json`, or None when there is none; a `DatasetError` naming the file
    when it is not one (unreadable, another format, a newer version, a malformed entry)."""
    path = Path(folder) / WDS_MANIFEST_FILE
    data = _read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != WDS_MANIFEST_FORMAT:
        raise DatasetError(f"{path}: not a relic-fast shard manifest (expected \"format\": \"{WDS_MANIFEST_FORMAT}\")")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise DatasetError(f"{path}: expected a version number, got {version!r}")
    if version > WDS_MANIFEST_VERSION:
        raise DatasetError(f"{path}: manifest version {version} is newer than this relic-fast reads "
                           f"({WDS_MANIFEST_VERSION}); upgrade relic-fast")
    if not isinstance(data.get("shards"), list) or data.get("classes") != WDS_CLASSES_FILE:  # v1: always classes.json
        raise DatasetError(f"{path}: expected \"classes\": \"{WDS_CLASSES_FILE}\" and \"shards\": [...]")
    shards = [_shard_record(path, entry) for entry in data["shards"]]
    return ShardManifest(path, shards, data["classes"])


def _classes_written_by_pack(folder: Path) -> bool:
    """Whether `folder/classes.json` is one `relic-fast pack` wrote (its `format` says so)."""
    try:
        data = json.loads((Path(folder) / WDS_CLASSES_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == WDS_CLASSES_FORMAT


def check_shard_manifest(root: Path, tar_paths: Sequence[Path]) -> ShardManifest | None:
    """Check the shards about to be read against `root/manifest.json` (cheap: names and sizes here, sample
    counts in `WebDataset.resolve`'s scan) and return the manifest, or None for third-party shards without one.

    Refused (`DatasetError`, naming the file): a listed shard missing (when the whole folder is read), a
    `.tar` the manifest does not list, a size that differs, the classes file gone, or no manifest although
    `classes.json` says `relic-fast pack` wrote the set (it may be a partial copy). Shards without either
    file are someone else's WebDataset: read unchecked, with one warning line."""
    manifest = read_shard_manifest(root)
    if manifest is None:
        if _classes_written_by_pack(root):
            raise DatasetError(f"{root / WDS_MANIFEST_FILE}: missing, although {WDS_CLASSES_FILE} says relic-fast "
                               f"pack wrote these shards: the set may be incomplete; pack it again (--overwrite)")
        warnings.warn(f"{root}: no {WDS_MANIFEST_FILE} (not written by relic-fast pack): its {len(tar_paths)} "
                      f"shards are read unchecked, a missing or truncated shard goes unnoticed", stacklevel=3)
        return None
    on_disk = {p.name for p in root.iterdir() if p.suffix == ".tar"}
    if {p.name for p in tar_paths} == on_disk:  # the whole folder, not one tar of it: every shard must be there
        missing = [r.name for r in manifest.shards if r.name not in on_disk]
        if missing:
            raise DatasetError(f"{root / missing[0]}: listed in {manifest.path} but missing ({len(missing)} of "
                               f"{len(manifest.shards)} shards missing); copy the set again or pack it again")
    for path in tar_paths:
        record = manifest.record(path.name)
        if record is None:
            raise DatasetError(f"{path}: not listed in {manifest.path} (a shard of another set?); move it out or "
                               f"pack the set again")
        size = path.stat().st_size
        if size != record.size:
            raise DatasetError(f"{path}: {size} bytes, but {manifest.path} records {record.size}: the shard was "
                               f"changed or cut short; copy the set again or pack it again")
    if not (root / manifest.classes_file).is_file():
        raise DatasetError(f"{root / manifest.classes_file}: missing, but {manifest.path} names it as the classes "
                           f"file; copy the set again or pack it again")
    return manifest
