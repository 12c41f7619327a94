"""The experiment's rows: each variant is a name, a label, the one change it makes to the recipe and how it
is trained, registered once in `VARIANTS` (nothing else switches on a variant's name).

- `random_init`: THE baseline, the recipe's encoder with torchvision's default init, seeded like the
  trainer's online encoder (`torch.manual_seed(seed)`, then `build_encoder`);
- `random_init_zero_residual`: the same with zero-init residual BatchNorm (BYOL's init: every block starts
  as the identity), a far weaker "random" network, shown so that nobody mistakes it for the baseline;
- `relicv2_saliency`: the recipe as written (with its saliency masking): the reference row. Each
  `relicv2_*` row below is this row with one change: `relicv2_no_saliency` (`views.saliency_p = 0`),
  `relicv2_no_invariance` (`loss.beta = 0`: a contrastive loss with a target network, no KL invariance
  term), `relicv2_multicrop` (2 small views at half the large views' size added: RELICv2's multi-crop) and
  `relicv2_learned_masks` (saliency masks from `relic-fast masks` instead of the dataset's own, computed
  once per dataset: `learned_masks`);
- `peer`, `peer_byol`: the same encoder, batch and steps trained by lightly's SimCLR and BYOL
  (`relic_fast.experiments.peer`), skipped with one line when lightly is not installed;
- `supervised`: the supervised reference (`relic_fast.experiments.supervised`): the recipe's views, its
  learning rate chosen on `val`, scored by its own head and by the probe.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relic_fast.checkpoint import encoder_from_checkpoint
from relic_fast.config import Config, config_from_dict
from relic_fast.demo_data import demo_cache_dir
from relic_fast.evaluation.runner import evaluate_encoder, random_init_encoder, split_datasets
from relic_fast.experiments.peer import lightly_available, peer_reference
from relic_fast.experiments.supervised import pretraining_steps, supervised_reference
from relic_fast.trainer import pretrain

Overrides = dict[str, dict[str, Any]]
"""Config changes as `--set` would give them: {section: {key: value}}."""


@dataclass(frozen=True)
class RowContext:
    """Where a row runs: the dataset root, its own run folder, and where its progress lines go."""

    data_root: Path
    run_dir: Path
    log: Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    """One row: `overrides(config, data_root, log)` is its change to the recipe, `train(config, context)`
    returns its scores ({"splits", "background_gap", ...}); `missing()` says why it cannot run here (None: it
    can)."""

    name: str
    label: str
    train: Callable[[Config, RowContext], dict[str, Any]]
    overrides: Callable[[Config, Path, Callable[[str], None]], Overrides] = lambda config, data_root, log: {}
    missing: Callable[[], str | None] = lambda: None
    head_label: str = ""
    """The label of its second entry, its own classifier head (`head_splits`), where it reports one."""


def probe_scores(result: dict[str, Any]) -> dict[str, Any]:
    """What a row keeps of the probe's report: the scores per split, the background gap, the chosen L2."""
    return {"splits": result["splits"], "background_gap": result.get("background_gap"), "probe_l2": result.get("l2")}


def random_row(zero_init_residual: bool) -> Callable[[Config, RowContext], dict[str, Any]]:
    """Probe the seed's random encoder (no training)."""
    def train(config: Config, context: RowContext) -> dict[str, Any]:
        encoder = random_init_encoder(config, zero_init_residual=zero_init_residual)
        return probe_scores(evaluate_encoder(encoder, config, context.data_root))
    return train


def pretrain_row(config: Config, context: RowContext) -> dict[str, Any]:
    """RELICv2 pretraining into the row's folder (continuing a run an earlier invocation left there), then
    the probe of its online encoder."""
    started = time.perf_counter()
    summary = pretrain(config, out_dir=context.run_dir, resume=True)
    train_s = round(time.perf_counter() - started, 1)  # of this invocation: a resumed run counts its rest only
    encoder, _ = encoder_from_checkpoint(summary["checkpoint"])
    scores = probe_scores(evaluate_encoder(encoder, config, context.data_root))
    return {**scores, "final_loss": summary.get("final_loss"), "steps": summary.get("steps"),
            "checkpoint": str(summary["checkpoint"]), "train_s": train_s}


def peer_row(method: str) -> Callable[[Config, RowContext], dict[str, Any]]:
    """lightly's `method` for the steps pretraining runs, then the probe."""
    def train(config: Config, context: RowContext) -> dict[str, Any]:
        steps = pretraining_steps(config, split_datasets(context.data_root)[0].num_samples)
        result = peer_reference(config, context.data_root, steps=steps, method=method, log=context.log)
        return {**result, **probe_scores(result)}
    return train


def supervised_row(config: Config, context: RowContext) -> dict[str, Any]:
    """The supervised reference (its lr chosen on val), scored by its head and by the probe."""
    return supervised_reference(config, context.data_root, log=context.log)


def learned_masks(data_root: Path, log: Callable[[str], None] = print) -> Path:
    """Saliency masks of the train split of `data_root` from `relic-fast masks` (its default method), computed
    once per dataset into `<cache>/learned-masks/<name>-<key>` (`demo_cache_dir`; the key hashes the
    dataset's resolved path and its dataset.json) and reused; `complete.json` marks a finished set."""
    from relic_fast.dataset_tools.masks import DEFAULT_METHOD, compute_masks

    root = Path(data_root).resolve()
    summary = root / "dataset.json"
    identity = str(root) + (summary.read_text() if summary.is_file() else "")
    out = demo_cache_dir() / "learned-masks" / f"{root.name}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    if (out / "complete.json").is_file():
        return out
    log(f"computing saliency masks ({DEFAULT_METHOD}) of {root / 'train'} into {out}")
    report = compute_masks(root, out, method=DEFAULT_METHOD, device="cpu")
    if report.failed:
        raise RuntimeError(f"relic-fast masks failed on {len(report.failed)} image(s) of {root}, "
                           f"e.g. {report.failed[0][0]}: {report.failed[0][1]}")
    (out / "complete.json").write_text(json.dumps({"data": str(root), "method": DEFAULT_METHOD,
                                                   "masks": report.written + report.skipped,
                                                   "seconds": round(report.seconds, 1)}) + "\n")
    return out


def lightly_missing() -> str | None:
    """Why the lightly rows cannot run here, or None."""
    return None if lightly_available() else "lightly is not installed (pip install 'relic-fast[peer]')"


VARIANTS: dict[str, Variant] = {variant.name: variant for variant in (
    Variant("random_init", "random init (default init: the baseline)", random_row(zero_init_residual=False)),
    Variant("random_init_zero_residual", "random init, zero-init residual (not a fair baseline)",
            random_row(zero_init_residual=True)),
    Variant("relicv2_no_saliency", "RELICv2 (no saliency)", pretrain_row,
            lambda config, data_root, log: {"views": {"saliency_p": 0.0}}),
    Variant("relicv2_saliency", "RELICv2 + saliency (the recipe)", pretrain_row),
    Variant("relicv2_no_invariance", "RELICv2 + saliency, no invariance term (beta = 0)", pretrain_row,
            lambda config, data_root, log: {"loss": {"beta": 0.0}}),
    Variant("relicv2_multicrop", "RELICv2 + saliency + 2 small views (multi-crop)", pretrain_row,
            lambda config, data_root, log: {"views": {"num_small": 2,
                                                      "small_size": config.views.large_size // 2}}),
    Variant("relicv2_learned_masks", "RELICv2 + saliency, learned masks (relic-fast masks)", pretrain_row,
            lambda config, data_root, log: {"data": {"masks": str(learned_masks(data_root, log))}}),
    Variant("peer", "peer: lightly SimCLR (same encoder, batch, steps)", peer_row("SimCLR"),
            missing=lightly_missing),
    Variant("peer_byol", "peer: lightly BYOL (same encoder, batch, steps)", peer_row("BYOL"),
            missing=lightly_missing),
    Variant("supervised", "supervised reference: probe of its frozen encoder", supervised_row,
            head_label="supervised reference: its own head"),
)}
"""The rows of the result table, in order."""


def labels() -> dict[str, str]:
    """The table's label of every entry: each variant's, and `<name>_head` for a variant's own head."""
    out = {}
    for variant in VARIANTS.values():
        out[variant.name] = variant.label
        if variant.head_label:
            out[f"{variant.name}_head"] = variant.head_label
    return out


def variant_config(config: Config, variant: Variant, *, seed: int, steps: int | None, data_root: Path,
                   log: Callable[[str], None] = print) -> tuple[Config, Overrides]:
    """The run config of one (variant, seed): the recipe with the variant's overrides, seed, step cap (None:
    the recipe's) and data root; and the overrides."""
    overrides = variant.overrides(config, data_root, log)
    train = {"seed": seed, "max_steps": config.train.max_steps if steps is None else steps}
    layered = {**overrides, "train": {**overrides.get("train", {}), **train},
               "data": {**overrides.get("data", {}), "path": str(data_root)}}
    return config_from_dict(config.to_dict(), f"variant {variant.name}", layered), overrides


ROW_KEYS = ("splits", "background_gap", "head_splits", "head_background_gap", "train_s", "steps", "final_loss",
            "checkpoint", "method", "base_lr", "lr_grid", "weight_decay", "probe_l2")
"""What a row keeps of its variant's result (`train_s`: wall-clock seconds of training, probe excluded)."""


def run_row(config: Config, variant: Variant, overrides: Overrides, context: RowContext) -> dict[str, Any]:
    """Train (unless a random init) and probe one (variant, seed); the result row (`row_s`: its whole time)."""
    started = time.perf_counter()
    result = variant.train(config, context)
    return {"variant": variant.name, "seed": config.train.seed, "overrides": overrides,
            **{k: v for k, v in result.items() if k in ROW_KEYS}, "row_s": round(time.perf_counter() - started, 1)}
