"""What `relic-fast linear-eval` does: find the splits, get the encoder, evaluate, write linear_eval.json.

The CLI only parses arguments and calls `run_linear_eval`; the experiment reuses `split_datasets`.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relic_fast.config import Config, config_from_dict, parse_overrides
from relic_fast.evaluation.protocol import linear_eval
from dali_pipelines.dataset import DatasetError, resolve_dataset
from relic_fast.models import build_encoder
from relic_fast.checkpoint import encoder_from_checkpoint, resolve_checkpoint_file
from relic_fast.environment import machine_info
from relic_fast.run_plan import resolve_plan

SKIPPED_FOLDERS = ("train", "masks")
"""Folders of a dataset root that are not validation splits."""


def split_datasets(data_root: Path) -> tuple[Any, dict[str, Any]]:
    """The `train/` split and every validation split of `data_root` (`val/` first, then the other folders).

    A validation split is any sibling folder of `train/` except `masks/` and hidden ones, e.g. the
    demo data's `val/` and `val_correlated/`; each is read as a folder tree of class folders.
    """

    root = Path(data_root)
    if not (root / "train").is_dir():
        raise DatasetError(f"{root}: expected a train/ folder (and val/) of class folders")
    names = sorted(p.name for p in root.iterdir()
                   if p.is_dir() and p.name not in SKIPPED_FOLDERS and not p.name.startswith((".", "_")))
    if "val" not in names:
        raise DatasetError(f"{root}: expected a val/ folder next to train/")
    names.sort(key=lambda name: name != "val")  # stable: val first, the rest alphabetical
    return (resolve_dataset(str(root / "train"), "folder"),
            {name: resolve_dataset(str(root / name), "folder") for name in names})


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


def default_output(checkpoint: Path | None) -> Path:
    """linear_eval.json next to the checkpoint (inside a run folder), or under runs/random_init/."""
    if checkpoint is None:
        return Path("runs/random_init/linear_eval.json")
    checkpoint = Path(checkpoint)
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "linear_eval.json"


def output_file(out: Path | None, checkpoint: Path | None) -> Path:
    """`--out` as a .json file, or a folder to hold linear_eval.json; the default when None."""
    if out is None:
        return default_output(checkpoint)
    out = Path(out)
    return out if out.suffix == ".json" else out / "linear_eval.json"


def evaluate_encoder(encoder: nn.Module, config: Config, data_root: Path, log=None) -> dict[str, Any]:
    """Linear evaluation of `encoder` on `data_root`'s splits under `config`; adds the background gap."""
    train_dataset, val_datasets = split_datasets(data_root)
    device = resolve_plan(config).torch_device
    precision = config.train.precision if device.type == "cuda" else "fp32"
    result = linear_eval(encoder, train_dataset=train_dataset, val_datasets=val_datasets, eval_cfg=config.eval,
                         data_cfg=config.data, device=device, seed=config.train.seed, precision=precision,
                         mean=config.views.mean, std=config.views.std, log=log)
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


def run_linear_eval(*, data_root: Path, config: Config, checkpoint: Path | None = None,
                    config_path: Path | None = None, overrides: list[str] | None = None,
                    random_init: bool = False, out: Path | None = None, log=None) -> tuple[dict[str, Any], Path]:
    """Evaluate a checkpoint's encoder or, with `random_init`, a random encoder of `config.model`.

    For a checkpoint the config is its saved one merged by `checkpoint_eval_config` (`config_path`'s
    [eval], then `overrides`); for `random_init` it is `config`. Writes the JSON report (see
    `output_file`) and returns it with its path.
    """

    source = None
    if random_init:
        encoder = random_init_encoder(config)
    else:
        source = resolve_checkpoint_file(checkpoint)
        encoder, saved = encoder_from_checkpoint(source)
        config = checkpoint_eval_config(saved, config_path, overrides)
    result = evaluate_encoder(encoder, config, data_root, log=log)
    result.update({"checkpoint": str(source) if source else None, "random_init": random_init,
                   "data": str(data_root), "model": dataclasses.asdict(config.model),
                   "eval": dataclasses.asdict(config.eval), "machine": machine_info()})
    path = output_file(out, None if random_init else checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result, path
