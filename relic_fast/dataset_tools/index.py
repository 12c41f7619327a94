"""`relic-fast index`: check every image of a dataset once and write the clean file list readers use.

Lists the dataset exactly as the readers do (`dali_pipelines.dataset.resolve_dataset`: a folder
tree `DIR/<class>/<image>` with labels from the sorted class-folder names, a demo-data root's
`train/` split, a flat folder with its labels CSV (ImageNet's Kaggle `val/`), or an existing file
list), checks each file in a process pool (`dali_pipelines.validate`), and writes:
- the index (default `DIR/index.txt`; for a list `train.txt`, `train.index.txt`): a version-2 file list
  (`dali_pipelines.formats.file_list.file_list_text`), whose header names the classes, then one `path label` per
  line, a path or class name quoted where it must be (a leading `#`, a tab, ...: the list's quoting
  rule), so every file the folder reader lists comes back from the index. Readers resolve a list's
  paths relative to the list's own folder, so each path is written relative to the index file's folder
  when the image lies under it, else absolute; an index written elsewhere (`--out`) therefore still
  points at the right files (their masks then live under the mask tree's `_abs/`).
- `<index stem>.rejected.tsv`: `path<TAB>reason` for every rejected file (paths as in the source,
  quoted like the index's; a byte that is not UTF-8 shown as `\\xNN`).
A file whose path is not valid UTF-8 cannot be written to a list (nor passed to DALI): it is skipped
unread, counted and named in the summary, and listed in the rejected TSV (reason `UNWRITABLE_NAME`); a
class folder whose name is not valid UTF-8 stops the run (a `DatasetError`: rename it), since dropping
a class would change every later class index. Files over the byte cap (`--max-image-mb`) are rejected
from their size, unread. The index and the TSV are written to temporary files and renamed; nothing
is left behind on an error. A cache in the dataset root (`.relic-fast-index-cache.json`, keyed by
path, size and mtime_ns) makes a re-run over an unchanged tree only stat files.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dali_pipelines.atomic import write_text_atomically
from dali_pipelines.dataset import DatasetError, DatasetSpec, resolve_dataset
from dali_pipelines.formats.file_list import can_record, displayed_name, file_list_text, list_field
from dali_pipelines.image_check import DEFAULT_MAX_IMAGE_MB, DEFAULT_MAX_PIXELS, ImageCheck, reason_category
from dali_pipelines.validate import validate_files

UNWRITABLE_NAME = "unwritable name: not valid UTF-8"
"""Rejection reason of a file whose path a file list cannot hold (`dali_pipelines.formats.file_list.can_record`)."""


@dataclass
class IndexReport:
    """What `index_dataset` did: where it wrote, what it kept and rejected, and how much work it took."""

    source: DatasetSpec
    index_path: Path
    rejected_path: Path
    checks: list[ImageCheck]
    validated: int
    cached: int
    seconds: float

    @property
    def kept(self) -> int:
        """Number of usable images written to the index."""
        return sum(c.reason is None for c in self.checks)

    @property
    def unwritable(self) -> list[str]:
        """Source paths skipped because a file list cannot hold them (not valid UTF-8), in source order."""
        return [f for f, c in zip(self.source.files, self.checks) if c.reason == UNWRITABLE_NAME]

    @property
    def rejected(self) -> list[tuple[str, str]]:
        """(path, reason) of every rejected file, in source order."""
        return [(f, c.reason) for f, c in zip(self.source.files, self.checks) if c.reason is not None]

    def rejected_by_category(self) -> Counter:
        """Count of rejected files per reason category (`truncated`, `not an image`, ...)."""
        return Counter(reason_category(reason) for _, reason in self.rejected)


def resolve_image_source(source: str | os.PathLike, masks: str = "", labels: str = "") -> DatasetSpec:
    """The readers' view of a folder tree, demo-data root, flat folder (`labels`: its labels CSV, else the
    one found by looking up) or file list; WebDataset shards are refused (their images are checked when
    `relic-fast pack` writes them). Raises `DatasetError` (a ValueError)."""
    spec = resolve_dataset(str(source), "auto", masks, labels)
    if not spec.format.image_files:
        raise DatasetError(f"{source} holds {spec.format.description}; this tool reads folder trees and file lists")
    return spec


def default_index_path(source: str | os.PathLike, spec: DatasetSpec) -> Path:
    """`<root>/index.txt` for a folder (a demo root's `train/index.txt`); `X.index.txt` for a list `X.txt`."""
    if Path(source).expanduser().is_file():
        listing = Path(source).expanduser().resolve()
        return listing.with_name(f"{listing.stem}.index.txt")
    return spec.root / "index.txt"


def index_line_path(image: str | os.PathLike, index_dir: str | os.PathLike) -> str:
    """How the index names `image`: relative to the index's folder when under it, else absolute."""
    image = os.path.abspath(image)
    index_dir = os.path.abspath(index_dir)
    if image.startswith(index_dir.rstrip(os.sep) + os.sep):
        return image[len(index_dir.rstrip(os.sep)) + 1:].replace(os.sep, "/")
    return image


def index_line_paths(root: Path, files: list[str], index_dir: Path) -> list[str]:
    """`index_line_path` of every file, with a string-prefix fast path when the root is under the index's folder."""
    root_abs, index_abs = os.path.abspath(root), os.path.abspath(index_dir)
    inside = root_abs == index_abs or root_abs.startswith(index_abs.rstrip(os.sep) + os.sep)
    prefix = os.path.relpath(root_abs, index_abs).replace(os.sep, "/")
    lines = []
    for name in files:
        if inside and not os.path.isabs(name) and ".." not in name.split("/"):
            lines.append(name if prefix == "." else f"{prefix}/{name}")
        else:
            lines.append(index_line_path(os.path.join(root_abs, name), index_abs))
    return lines


def _tsv_path(path: str) -> str:
    """A path as the rejected TSV shows it: quoted like the index (so a tab or line break in it cannot
    break the row), or, when it is not valid UTF-8, with each such byte shown as `\\xNN`."""
    return list_field(path) if can_record(path) else displayed_name(path)


def write_index(report: IndexReport) -> None:
    """Write the index (kept files) and the rejected TSV, each with `write_text_atomically`; both texts are
    built before either file is touched, and a failed write (Ctrl-C too) leaves no temporary file beside the
    dataset."""
    source = report.source
    keep = [i for i, check in enumerate(report.checks) if check.reason is None]
    paths = index_line_paths(source.root, [source.files[i] for i in keep], report.index_path.parent)
    kept = file_list_text(paths, [source.labels[i] for i in keep], source.class_names)
    rejected = "".join(f"{_tsv_path(path)}\t{reason}\n" for path, reason in report.rejected)
    for path, text in ((report.index_path, kept), (report.rejected_path, rejected)):
        write_text_atomically(path, text)


def _check_names(dataset: DatasetSpec, line_paths: list[str]) -> list[int]:
    """Positions of the files whose index line a file list cannot hold (not valid UTF-8: skipped, named);
    a class name it cannot hold is a `DatasetError` naming the class folder."""
    for name, where in zip(dataset.class_names, dataset.class_sources or dataset.class_names):
        if not can_record(name):
            raise DatasetError(f"class folder '{displayed_name(name)}' ({displayed_name(where)}): its name is not "
                               f"valid UTF-8, which a file list cannot record; rename it")
    return [i for i, line in enumerate(line_paths) if not can_record(line)]


def index_dataset(source: str | os.PathLike, *, out: str | os.PathLike | None = None, labels: str = "",
                  workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  min_side: int = 1, max_image_mb: float = DEFAULT_MAX_IMAGE_MB,
                  on_start: Callable[[int], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> IndexReport:
    """Validate every image of `source` and write its index and rejected list (see module docstring).

    `labels` names a flat folder's labels CSV (default: `LOC_<folder>_solution.csv` found by looking up).
    `max_image_mb`: files larger than this many MB (2**20 bytes) are rejected unread.
    `on_start(total)` is called once the file count is known, `on_progress(n)` as n more are done.
    """
    start = time.perf_counter()
    dataset = resolve_image_source(source, labels=labels)
    index_path = Path(out) if out else default_index_path(source, dataset)
    unwritable = set(_check_names(dataset, index_line_paths(dataset.root, dataset.files, index_path.parent)))
    index_path.parent.mkdir(parents=True, exist_ok=True)
    rejected_path = index_path.with_name(f"{index_path.name.removesuffix('.txt')}.rejected.tsv")
    if on_start:
        on_start(len(dataset.files))
    if on_progress and unwritable:
        on_progress(len(unwritable))
    todo = [i for i in range(len(dataset.files)) if i not in unwritable]
    result = validate_files(dataset.root, [dataset.files[i] for i in todo], workers=workers,
                            max_pixels=max_pixels, min_side=min_side, max_image_mb=max_image_mb,
                            on_progress=on_progress)
    checks = [ImageCheck(UNWRITABLE_NAME)] * len(dataset.files)
    for i, check in zip(todo, result.checks):
        checks[i] = check
    report = IndexReport(dataset, index_path, rejected_path, checks, result.validated, result.cached, 0.0)
    write_index(report)
    report.seconds = time.perf_counter() - start
    return report


def summary_rows(report: IndexReport) -> list[tuple[str, str]]:
    """(item, value) rows for the summary table: kept, rejected per reason, shapes, work and time."""
    kept = [c for c in report.checks if c.reason is None]
    rows = [("source", displayed_name(str(report.source.root))), ("index", displayed_name(str(report.index_path))),
            ("kept", str(len(kept)))]
    if report.source.class_names:
        rows.append(("classes", str(len(report.source.class_names))))
    unwritable_category = reason_category(UNWRITABLE_NAME)
    for category, count in sorted(report.rejected_by_category().items()):
        if category != unwritable_category:
            rows.append((f"rejected: {category}", str(count)))
    if unwritable := report.unwritable:
        rows.append(("skipped: name not valid UTF-8", f"{len(unwritable)}, e.g. {displayed_name(unwritable[0])}"))
    if report.rejected:
        rows.append(("rejected list", displayed_name(str(report.rejected_path))))
    if kept:
        formats = Counter(f"{c.format} {c.mode}" for c in kept)
        rows.append(("formats", ", ".join(f"{k}: {v}" for k, v in formats.most_common(6))))
        sides = sorted(min(c.width, c.height) for c in kept)
        rows.append(("short side (min / median / max)",
                     f"{sides[0]} / {sides[len(sides) // 2]} / {sides[-1]} px"))
    rows.append(("validated / from cache", f"{report.validated} / {report.cached}"))
    rows.append(("time", f"{report.seconds:.2f} s"))
    return rows
