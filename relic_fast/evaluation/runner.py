"""What `relic-fast linear-eval` does: find the splits, get the encoder, evaluate, write linear_eval.json.

The CLI only parses arguments and calls `run_linear_eval`; the experiment reuses `split_datasets`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dali_pipelines.atomic import write_text_atomically
from relic_fast.config import Config, config_from_dict, parse_overrides
from relic_fast.evaluation.protocol import linear_eval
from dali_pipelines.dataset import (DatasetError, DatasetSpec, align_split, is_labelled, resolve_dataset,
                                    resolve_split, unlabelled_reason)
from relic_fast.models import build_encoder
from relic_fast.checkpoint import encoder_from_checkpoint, resolve_checkpoint_file
from relic_fast.evaluation.session import EvalSession, eval_folder, start_session
from relic_fast.environment import machine_info
from relic_fast.run_plan import resolve_plan

SKIPPED_FOLDERS = ("train", "masks")
"""Folders of a dataset root that are not validation splits."""


@dataclass(frozen=True)
class EvalSplits:
    """Where linear evaluation reads its splits: a dataset root (`--data ROOT`: its `train/` and every
    labelled folder beside it) or explicit splits (`--train SPLIT --val SPLIT ...`); `val_labels`
    (`--val-labels`) labels a flat val split (in ROOT mode: the folder named `val`)."""

    data: Path | None = None
    train: str = ""
    val: tuple[str, ...] = ()
    val_labels: str = ""

    def __str__(self) -> str:
        """The dataset root, or `train=... val=...` (the report's "data" entry)."""
        if self.data is not None:
            return str(self.data)
        return f"train={self.train} val={','.join(self.val)}"


def split_name(path: str | Path) -> str:
    """The name a split is reported under: its folder's name (a list's or a shard's without the suffix)."""
    path = Path(path).expanduser()
    return path.stem if path.suffix in (".txt", ".tar") else path.resolve().name


def labelled_train_split(path: str | Path, classes: str = "") -> DatasetSpec:
    """The train split at `path` (any layout, `classes`: `data.classes`), which must be labelled."""
    train = resolve_dataset(str(path), classes=classes)
    if not is_labelled(train):
        raise DatasetError(f"{train.root}: {unlabelled_reason(train)}; linear evaluation needs a labelled "
                           f"train split")
    return train


def split_datasets(source: Path | EvalSplits, *, classes: str = "", val_labels: str = "",
                   log: Callable[[str], None] | None = None) -> tuple[DatasetSpec, dict[str, DatasetSpec]]:
    """The train split and the validation splits ({name: spec}, reported in that order) of `source`.

    A root (a `Path`, or `EvalSplits.data`): `train/` and every folder beside it except `masks/` and
    hidden ones (`val/` first, then alphabetical), e.g. the demo's `val/` and `val_correlated/`, or
    Kaggle's `CLS-LOC/` (`val/` flat, labelled by `LOC_val_solution.csv`); an unlabelled folder (Kaggle's
    `test/`) is skipped with one `log` line. Explicit splits: `train` and each of `val`, named by
    `split_name`. Each split may be a class-folder tree, a file list, shards or a flat folder with its
    labels CSV (`EvalSplits.val_labels`, else `val_labels`: `data.val_labels`, else found by looking up).
    `classes` (`data.classes`) keeps those classes in every split. Validation labels follow the train
    split's class NAMES (`dali_pipelines.dataset.align_split`); a disagreement is a `DatasetError`.
    """
    splits = source if isinstance(source, EvalSplits) else EvalSplits(data=Path(source))
    labels = splits.val_labels or val_labels
    if splits.data is None:
        if not splits.train or not splits.val:
            raise DatasetError("give the train split and at least one validation split (--train SPLIT --val SPLIT)")
        names = [split_name(path) for path in splits.val]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DatasetError(f"two validation splits would both be reported as {repeated[0]!r}: "
                               f"{', '.join(v for v, n in zip(splits.val, names) if n == repeated[0])}")
        train = labelled_train_split(splits.train, classes)
        return train, {name: resolve_split(path, train=train, labels=labels, classes=classes)
                       for name, path in zip(names, splits.val)}
    root = Path(splits.data)
    if not (root / "train").is_dir():
        raise DatasetError(f"{root}: expected a train/ folder (and val/) of class folders")
    names = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and p.name not in SKIPPED_FOLDERS and not p.name.startswith((".", "_")))
    if "val" not in names:
        raise DatasetError(f"{root}: expected a val/ folder next to train/")
    names.sort(key=lambda name: name != "val")  # stable: val first, the rest alphabetical
    train = labelled_train_split(root / "train", classes)
    val_datasets = {}
    for name in names:
        spec = resolve_dataset(str(root / name), labels=labels if name == "val" else "")
        if not is_labelled(spec):
            if log is not None:
                log(f"skipping split {name}: {unlabelled_reason(spec, brief=True)}")
            continue
        val_datasets[name] = align_split(spec, train=train, classes=classes)
    if not val_datasets:
        raise DatasetError(f"{root}: no labelled split beside train/ to report")
    return train, val_datasets


def checkpoint_eval_config(saved: Config, config_path: Path | None, overrides: list[str] | None) -> Config:
    """The checkpoint's saved config with the [eval] section of `config_path` and any `--set` overrides on top.

    The saved config fixes the encoder (model section); only evaluation settings come from the file,
    while `--set` may change any key (e.g. data.num_threads, train.device).
    """
    merged = saved.to_dict()
    source = "checkpoint config"
    if config_path is not None:
        merged["eval"].update(tomllib.loads(Path(config_path).read_text()).get("eval", {}))
        source = f"checkpoint config + [eval] of {config_path}"
    return config_from_dict(merged, source, parse_overrides(overrides or []))


def random_init_encoder(config: Config, zero_init_residual: bool = False) -> nn.Module:
    """A randomly initialized encoder of `config.model` (seeded by `train.seed`).

    The baseline is torchvision's default init (`zero_init_residual=False`): a zero-init-residual network
    starts every block as the identity, so its random features are far weaker and flatter any encoder
    compared with it. `zero_init_residual=True` gives the pretraining init, for a second, labelled row.
    """

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return build_encoder(config.model.encoder, config.model.width, config.model.small_stem,
                             zero_init_residual=zero_init_residual)


def evaluate_encoder(encoder: nn.Module, config: Config, data_root: Path | EvalSplits, log=None,
                     session: EvalSession | None = None) -> dict[str, Any]:
    """Linear evaluation of `encoder` on `data_root`'s splits under `config`; adds the background gap.
    `session`: the CLI's (ranks, signals, checkpoints, head file: `start_session`); None: in-process."""
    train_dataset, val_datasets = split_datasets(data_root, classes=config.data.classes,
                                                 val_labels=config.data.val_labels, log=log)
    device = session.world.device if session is not None else resolve_plan(config).torch_device
    precision = config.train.precision if device.type == "cuda" else "fp32"
    result = linear_eval(encoder, train_dataset=train_dataset, val_datasets=val_datasets, eval_cfg=config.eval,
                         data_cfg=config.data, device=device, seed=config.train.seed, precision=precision,
                         mean=config.views.mean, std=config.views.std, log=log, session=session)
    gap = background_gap(result["splits"])
    if gap is not None:
        result["background_gap"] = gap
    return result


def background_gap(splits: dict[str, dict[str, float]]) -> float | None:
    """Reliance on the spurious background: val_correlated top-1 minus val top-1 (where it carries no
    signal); None unless both splits were scored."""
    if "val" in splits and "val_correlated" in splits:
        return splits["val_correlated"]["top1"] - splits["val"]["top1"]
    return None


def linear_eval_table(result: dict[str, Any]):
    """A rich table of a linear-eval report: top-1 and top-k per split, and the background gap."""
    from rich.table import Table

    what = "random init, default init" if result.get("random_init") else result.get("checkpoint")
    how = (f"logistic, L2 {result['l2']:g}" if result["mode"] == "logistic"
           else f"{result['mode']}, {result['epochs']} epochs")
    caption = None
    if "background_gap" in result:
        caption = f"background reliance (val_correlated - val top-1): {result['background_gap']:+.2f} points"
    table = Table(title=f"linear evaluation ({what}; {how})", caption=caption)
    for column in ("split", "images", "top-1 %", f"top-{result['top5_k']} %"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, scores in result["splits"].items():
        table.add_row(name, str(result["val_samples"][name]), f"{scores['top1']:.2f}", f"{scores['top5']:.2f}")
    return table


def run_linear_eval(*, data_root: Path | EvalSplits, config: Config, checkpoint: Path | None = None,
                    config_path: Path | None = None, overrides: list[str] | None = None,
                    random_init: bool = False, out: Path | None = None, log=None,
                    resume: bool = False) -> tuple[dict[str, Any], Path]:
    """Evaluate a checkpoint's encoder or, with `random_init`, a random encoder of `config.model`.

    For a checkpoint the config is its saved one merged by `checkpoint_eval_config` (`config_path`'s
    [eval], then `overrides`); for `random_init` it is `config`. Runs as one rank of many under torchrun.
    Rank 0 writes the folder (`session.eval_folder`: the JSON report, `head.pt`, `checkpoints/`); a stop
    signal checkpoints and raises `RunStopped`, `resume` continues from the folder's newest checkpoint.
    Returns the report and its path.
    """

    source = None
    if random_init:
        encoder = random_init_encoder(config)
    else:
        source = resolve_checkpoint_file(checkpoint)
        encoder, saved = encoder_from_checkpoint(source)
        config = checkpoint_eval_config(saved, config_path, overrides)
    folder, path = eval_folder(out, None if random_init else checkpoint)
    session = start_session(config, folder=folder, resume=resume, source=source, log=log)
    try:
        result = evaluate_encoder(encoder, config, data_root, log=session.log, session=session)
        result.update({"checkpoint": str(source) if source else None, "random_init": random_init,
                       "data": str(data_root), "model": dataclasses.asdict(config.model),
                       "eval": dataclasses.asdict(config.eval), "machine": machine_info()})
        if session.world.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(result, indent=2, default=str) + "\n"
            write_text_atomically(path, text)
    finally:
        session.close()
    return result, path
