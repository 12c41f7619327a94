"""DALI's index of a WebDataset shard (what `fn.readers.webdataset(index_paths=...)` reads instead of scanning every
tar at start-up): the one writer (`write_wds_index`) for `relic-fast pack`'s `.idx` files and the readers' private
ones, and the choice between them (`wds_indexes`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

from dali_pipelines.atomic import write_text_atomically
from dali_pipelines.formats.shards import WDS_MANIFEST_FILE, ShardManifest, image_member, read_shard_manifest, scan_tar
from dali_pipelines.private_cache import private_cache_dir

WDS_INDEX_VERSION = "v1.2"
"""The version of DALI's WebDataset index format (`wds2idx`) that `write_wds_index` writes."""


def write_wds_index(tar: Path, index: Path) -> int:
    """Write DALI's index of `tar` (what `fn.readers.webdataset(index_paths=...)` reads instead of scanning the
    tar at start-up) to `index`, atomically; returns the samples listed.

    Format `v1.2`: the line `v1.2 <samples>`, then per sample `ext offset size name` for each member, the
    offset being where the member's data starts. Samples as `scan_tar` groups them (its key rule), only those
    with an image (`image_member`), so the index lists exactly the samples the dataset counts. The one writer
    for the readers' private indexes and `relic-fast pack`'s, so an index beside a shard and one written for it
    later are the same file."""
    lines = [" ".join(f"{ext} {m.offset_data} {m.size} {m.name}" for ext, m in members.items())
             for _, members in scan_tar(tar) if image_member(members) is not None]
    write_text_atomically(index, f"{WDS_INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines))
    return len(lines)


INDEX_FOLDER = "wds-index"
"""Inside the private cache folder: WebDataset indexes written for shards without a usable `.idx`."""


def _index_mismatch(tar: Path, beside: Path, manifest: ShardManifest | None) -> str | None:
    """Why the `.idx` beside `tar` cannot be trusted to match it, or None when the set's manifest vouches
    for both: `relic-fast pack` recorded the tar's and the index's size and mtime (a stat each, no read)."""
    if manifest is None:
        return f"no {WDS_MANIFEST_FILE} beside it records that it matches {tar.name}"
    record = manifest.record(tar.name)
    if record is None or record.index_name != beside.name:
        return f"{manifest.path.name} does not list it"
    tar_info, index_info = tar.stat(), beside.stat()
    if (tar_info.st_size, tar_info.st_mtime_ns) != (record.size, record.mtime_ns):
        return (f"{tar.name}'s size or mtime differs from {manifest.path.name}'s: the tar was rewritten (or copied "
                f"without its times) after the index was written")
    if (index_info.st_size, index_info.st_mtime_ns) != (record.index_size, record.index_mtime_ns):
        return f"its size or mtime differs from {manifest.path.name}'s: it was rewritten after relic-fast pack"
    return None


def _cached_index(tar: Path, folder: Path) -> Path:
    """The index of `tar` (`write_wds_index`, the one `relic-fast pack` writes too), written once into `folder`
    (private) under a name keyed by the tar's path, size and mtime (a rewritten tar gets a new one)."""
    info = tar.stat()
    key = hashlib.sha256(f"{tar.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()).hexdigest()[:32]
    path = folder / f"{key}.idx"
    if not path.is_file():
        write_wds_index(tar, path)
    return path


def wds_indexes(tars: Sequence[Path]) -> list[Path]:
    """DALI's index of each shard (DALI would otherwise scan every tar at start-up).

    The `.idx` beside a tar is used only while the set's `manifest.json` vouches that it still matches the tar
    (`_index_mismatch`: the sizes and mtimes `relic-fast pack` recorded). Otherwise, as for a tar without one,
    an index is written into the private cache folder (`private_cache_dir`), and an `.idx` beside the tar that
    was passed over (stale after the tar was rewritten, or a third-party one nothing vouches for) is named in
    one warning line: it is never used silently."""
    folder = private_cache_dir() / INDEX_FOLDER
    folder.mkdir(mode=0o700, exist_ok=True)
    manifests: dict[Path, ShardManifest | None] = {}
    passed_over: dict[Path, str] = {}
    paths = []
    for tar in map(Path, tars):
        beside = tar.with_suffix(".idx")
        if beside.is_file():
            if tar.parent not in manifests:
                manifests[tar.parent] = read_shard_manifest(tar.parent)
            problem = _index_mismatch(tar, beside, manifests[tar.parent])
            if problem is None:
                paths.append(beside)
                continue
            passed_over.setdefault(beside, problem)
        paths.append(_cached_index(tar, folder))
    if passed_over:
        beside, problem = next(iter(passed_over.items()))
        more = f" (and {len(passed_over) - 1} more shards' .idx files)" if len(passed_over) > 1 else ""
        warnings.warn(f"{beside}: not used, {problem}{more}; reading an index written into {folder} instead",
                      stacklevel=2)
    return paths


def wds_index(tar: Path) -> Path:
    """DALI's index of one shard (`wds_indexes`): the `.idx` beside it while it still matches, else a private one."""
    return wds_indexes([tar])[0]

