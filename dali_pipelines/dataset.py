"""What a dataset path holds: `resolve_dataset` turns a folder tree, a file list, a flat folder with its
labels file or WebDataset shards into a `DatasetSpec`; `resolve_split` reads an evaluation split with the
train split's class indices (matched by class NAME); `find_monitor_split` finds the split the pretraining
monitor scores.

The spec is plain data (paths, labels, class names, counts) that the readers turn into DALI readers and
that tools (`relic-fast index`, `pack`) inspect. Each layout is one format class in `dali_pipelines.formats`
(its module documents the layout), registered in `formats.registry.FORMATS`: `folder` (a tree
`root/<class>/<image>`), `file_list` (a `.txt` of `path label` lines), `flat` (images with a labels CSV,
ImageNet's Kaggle `val/`) and `webdataset` (`.tar` shards). `format="auto"` takes the first format that
recognizes the path. A demo-data root (a folder holding `train/`) resolves to its `train/` split. Saliency
masks of image-file formats live in a parallel tree (`mask_file`, `dali_pipelines.formats.base`).

Class subsets (`data.classes`): a file of class names, one per line (blank and `#` lines skipped), or the
name of a list shipped in `class_lists/` (`imagenet100`: CMC's ImageNet-100, the list solo-learn uses).
`resolve_dataset(..., classes=)` keeps those classes of the train split (in the split's own order,
re-indexed 0..K-1; a listed class the split lacks is an error); `resolve_split(..., classes=)` drops the
other classes' samples of an evaluation split. Every disagreement is a `DatasetError` naming the file
and row (the CLI: one line, exit code 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dali_pipelines.formats.base import DatasetError, DatasetSpec, mask_file
from dali_pipelines.formats.registry import detect, format_named

__all__ = ["BUILTIN_CLASS_LISTS", "ClassList", "DatasetError", "DatasetSpec", "align_split", "find_monitor_split",
           "is_labelled", "mask_file", "read_class_list", "resolve_dataset", "resolve_split", "restrict_classes",
           "unlabelled_reason"]

CLASS_LISTS_DIR = Path(__file__).resolve().parent / "class_lists"
BUILTIN_CLASS_LISTS = {"imagenet100": "imagenet100.txt"}
"""`data.classes` names of the class lists shipped in `class_lists/`: `imagenet100` is CMC's ImageNet-100
(Tian et al., 2019; the same 100 wnids solo-learn ships as `imagenet100_classes.txt`)."""


def resolve_dataset(path: str, format: str = "auto", masks: str = "", labels: str = "",
                    classes: str = "") -> DatasetSpec:
    """Resolve `path` (see the module docstring) into a `DatasetSpec`; `masks` overrides the mask root,
    `labels` names a flat folder's labels CSV, `classes` (`data.classes`) keeps only those classes."""
    if not path:
        raise DatasetError("no dataset path given (the trainer substitutes the demo dataset for an empty path)")
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise DatasetError(f"dataset path {source} does not exist")
    if source.is_dir() and (source / "train").is_dir() and format in ("auto", "folder"):
        source = source / "train"  # a demo-data root: its train split, masks at <root>/masks/train
    dataset_format = detect(source) if format == "auto" else format_named(format)
    spec = dataset_format.resolve(source, masks=masks, labels=labels)
    return restrict_classes(spec, read_class_list(classes), strict=True) if classes else spec


# ---------------------------------------------------------------- class subsets and evaluation splits

@dataclass(frozen=True)
class ClassList:
    """A `data.classes` list: class names and the row of the file that names each."""

    path: Path
    names: list[str]
    rows: list[int]


def class_list_path(value: str) -> Path:
    """The file behind a `data.classes` value: a built-in list's (`BUILTIN_CLASS_LISTS`) or the path given."""
    if value in BUILTIN_CLASS_LISTS:
        return CLASS_LISTS_DIR / BUILTIN_CLASS_LISTS[value]
    return Path(value).expanduser()


def read_class_list(value: str) -> ClassList:
    """Read a class list (one class name per line; blank and `#` lines skipped; a name twice is an error)."""
    path = class_list_path(value)
    if not path.is_file():
        known = ", ".join(BUILTIN_CLASS_LISTS)
        raise DatasetError(f"data.classes: {path} does not exist (give a file of class names, one per line, "
                           f"or a built-in list: {known})")
    names: list[str] = []
    rows: list[int] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        if name in names:
            raise DatasetError(f"{path}:{number}: class {name!r} is listed twice (first at row "
                               f"{rows[names.index(name)]})")
        names.append(name)
        rows.append(number)
    if not names:
        raise DatasetError(f"{path}: the class list names no class")
    return ClassList(path, names, rows)


def restrict_classes(spec: DatasetSpec, subset: ClassList, *, strict: bool) -> DatasetSpec:
    """`spec` with only the samples of `subset`'s classes, re-indexed 0..K-1 in the spec's own class order.

    `strict` (a train split): every listed class must be one of the spec's, else a `DatasetError` naming
    the list's file and row. Not strict (an evaluation split): listed classes the split lacks are fine."""
    position = {name: i for i, name in enumerate(spec.class_names)}
    if strict:
        for name, row in zip(subset.names, subset.rows):
            if name not in position:
                raise DatasetError(f"{subset.path}:{row}: class {name!r} is not a class of {spec.root} "
                                   f"({len(spec.class_names)} classes)")
    chosen = set(subset.names)
    kept = [i for i, name in enumerate(spec.class_names) if name in chosen]
    sources = [spec.class_sources[i] for i in kept] if spec.class_sources else []
    return spec.format.relabel(spec, {old: new for new, old in enumerate(kept)}, [spec.class_names[i] for i in kept],
                    sources, keep_unmapped=False)


def is_labelled(spec: DatasetSpec) -> bool:
    """Whether `spec` has class names (an unlabelled flat folder or shards without `.cls` have none)."""
    return bool(spec.class_names)


def unlabelled_reason(spec: DatasetSpec, *, brief: bool = False) -> str:
    """Why `spec` has no labels and, unless `brief`, what gives it some (for messages after its root)."""
    return spec.format.unlabelled_reason(spec, brief=brief)


def align_split(spec: DatasetSpec, *, train: DatasetSpec, classes: str = "") -> DatasetSpec:
    """An evaluation split with the train split's class indices: its labels mapped by class NAME onto
    `train.class_names` (`classes`: first drop the other classes' samples).

    A `DatasetError` when the split is unlabelled or uses a class the train split lacks (naming where the
    split declares that class: its file and row, or its class folder)."""
    if not is_labelled(spec):
        raise DatasetError(f"{spec.root}: {unlabelled_reason(spec)}; an evaluation split needs labels")
    if classes:
        spec = restrict_classes(spec, read_class_list(classes), strict=False)
    index = {name: i for i, name in enumerate(train.class_names)}
    mapping = {}
    for label in sorted({label for label in spec.labels if label >= 0}):
        name = spec.class_names[label]
        if name not in index:
            where = spec.class_sources[label] if spec.class_sources else str(spec.root)
            raise DatasetError(f"{where}: class {name!r} is not a class of the train split {train.root} "
                               f"({len(train.class_names)} classes)")
        mapping[label] = index[name]
    if list(spec.class_names) == list(train.class_names):
        return spec
    return spec.format.relabel(spec, mapping, list(train.class_names), list(train.class_sources),
                               keep_unmapped=True)


def resolve_split(path: str | Path, *, train: DatasetSpec, labels: str = "", classes: str = "",
                  format: str = "auto", masks: str = "") -> DatasetSpec:
    """The evaluation split at `path` (any layout; `labels`: a flat folder's labels CSV) with the train
    split's class indices (`align_split`)."""
    return align_split(resolve_dataset(str(path), format, masks, labels), train=train, classes=classes)


def find_monitor_split(data_path: str, explicit: str = "", labels: str = "") -> Path | None:
    """The split the pretraining monitor (kNN, online probe) scores, or None when there is none.

    1. `explicit` (`pretrain --val`, `data.val`): that path, which must exist (else a `DatasetError`);
    2. else `<data_path>/val` when `data_path` is a folder holding one (the demo layout: train/, val/);
    3. else the `val` beside a data folder named `train` (`--data .../CLS-LOC/train` gives
       `.../CLS-LOC/val`, Kaggle's flat validation folder).
    A split found by 2 or 3 counts only when it is labelled: a flat folder needs its labels file
    (`labels`, `data.val_labels`, else `LOC_val_solution.csv` found by looking up: `DatasetFormat.has_labels`);
    an unlabelled one gives None. Read the result with `resolve_split(path, train=..., labels=labels)`,
    which also checks its classes against the train split's.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise DatasetError(f"validation split {path} (data.val) does not exist")
        return path
    if not data_path:
        return None
    data = Path(data_path).expanduser().resolve()
    if (data / "val").is_dir():
        candidate = data / "val"
    elif data.is_dir() and data.name == "train" and (data.parent / "val").is_dir():
        candidate = data.parent / "val"
    else:
        return None
    if not detect(candidate).has_labels(candidate, labels):
        return None
    return candidate
