"""The demo experiment: does RELICv2 pretraining learn more than random features, and does saliency
masking reduce background reliance?

For each seed, pretrain the recipe twice, with saliency masking (the recipe's `views.saliency_p`) and
without (`saliency_p = 0`), then probe both encoders and the baselines with the same probe on `val/`
(backgrounds independent of the class) and `val_correlated/` (backgrounds correlated like train). The
result table gives mean +- std over seeds of top-1 on each split and their gap (reliance on the spurious
background). The rows:
- `random_init`: THE baseline, the recipe's encoder with torchvision's default init, seeded like the
  trainer's online encoder (`torch.manual_seed(seed)`, then `build_encoder`);
- `random_init_zero_residual`: the same with zero-init residual BatchNorm (BYOL's init: every block
  starts as the identity), a far weaker "random" network, shown so that nobody mistakes it for the baseline;
- `relicv2_no_saliency`, `relicv2_saliency`: the two pretrained encoders;
- `peer`: the same encoder, batch and steps trained by lightly's SimCLR (`relic_fast.experiments.peer`),
  skipped with one line when lightly is not installed;
- `supervised`: the supervised reference (`relic_fast.experiments.supervised`), the default-init encoder
  trained end-to-end with the labels for the pretraining step budget with plain SGD: a reference, not a
  ceiling.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from relic_fast.checkpoint import encoder_from_checkpoint
from relic_fast.config import Config, load_config
from relic_fast.demo_data import ensure_demo_dataset
from relic_fast.evaluation.runner import evaluate_encoder, random_init_encoder, split_datasets
from relic_fast.experiments.peer import lightly_available, peer_reference
from relic_fast.experiments.supervised import pretraining_steps, supervised_reference
from relic_fast.trainer import pretrain

VARIANTS = ("random_init", "random_init_zero_residual", "relicv2_no_saliency", "relicv2_saliency", "peer",
            "supervised")
"""Rows of the result table, in order."""

LABELS = {"random_init": "random init (default init: the baseline)",
          "random_init_zero_residual": "random init, zero-init residual (not a fair baseline)",
          "relicv2_no_saliency": "RELICv2 (no saliency)", "relicv2_saliency": "RELICv2 + saliency",
          "peer": "peer: lightly SimCLR (same encoder, batch, steps)",
          "supervised": "supervised reference (labels, same steps)"}


def variant_config(config: Config, variant: str, *, seed: int, steps: int | None, data_root: Path) -> Config:
    """The run config of one (variant, seed): the recipe with seed, step cap (None: the recipe's), data
    and saliency_p set."""
    views = config.views
    if variant == "relicv2_no_saliency":
        views = dataclasses.replace(views, saliency_p=0.0)
    return config.replace(views=views, data=dataclasses.replace(config.data, path=str(data_root)),
                          train=dataclasses.replace(config.train, seed=seed,
                                                    max_steps=config.train.max_steps if steps is None else steps))


def run_variant(config: Config, variant: str, *, data_root: Path, run_dir: Path, log=print) -> dict[str, Any]:
    """Pretrain or train (unless a random init) into `run_dir`, probe the encoder; one result row."""

    row: dict[str, Any] = {"variant": variant, "seed": config.train.seed, "saliency_p": config.views.saliency_p}
    started = time.perf_counter()
    if variant in ("supervised", "peer"):
        if variant == "supervised":
            result = supervised_reference(config, data_root)
        else:
            train_samples = split_datasets(data_root)[0].num_samples
            result = peer_reference(config, data_root, steps=pretraining_steps(config, train_samples))
        row.update(steps=result["steps"], saliency_p=None, train_s=round(time.perf_counter() - started, 1))
        return finish_row(row, result, log)
    if variant.startswith("random_init"):
        encoder = random_init_encoder(config, zero_init_residual=variant == "random_init_zero_residual")
    else:
        summary = pretrain(config, out_dir=run_dir, resume=False)
        encoder, _ = encoder_from_checkpoint(summary["checkpoint"])
        row.update(final_loss=summary.get("final_loss"), steps=summary.get("steps"),
                   checkpoint=str(summary["checkpoint"]), train_s=round(time.perf_counter() - started, 1))
    return finish_row(row, evaluate_encoder(encoder, config, data_root), log)


def finish_row(row: dict[str, Any], result: dict[str, Any], log) -> dict[str, Any]:
    """Add an evaluation `result`'s per-split scores and background gap to `row`, and log one line."""
    row["splits"] = result["splits"]
    row["background_gap"] = result.get("background_gap")
    log(f"{LABELS[row['variant']]} (seed {row['seed']}): "
        + ", ".join(f"{name} top-1 {scores['top1']:.1f}%" for name, scores in row["splits"].items()))
    return row


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant: mean/std over seeds of each split's top-1 and of the background gap."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant in VARIANTS:
        mine = [row for row in rows if row["variant"] == variant]
        if not mine:
            continue
        metrics = {f"{split}_top1": mean_std([row["splits"][split]["top1"] for row in mine])
                   for split in mine[0]["splits"]}
        if all(row.get("background_gap") is not None for row in mine):
            metrics["background_gap"] = mean_std([row["background_gap"] for row in mine])
        margins = paired_margins(rows, variant)
        if margins and variant != "random_init":
            metrics["margin"] = mean_std(margins)
        summary[variant] = metrics
    return summary


def paired_margins(rows: list[dict[str, Any]], variant: str, split: str = "val") -> list[float]:
    """Per seed with both rows: `variant`'s top-1 on `split` minus the default-init baseline's."""
    baseline = {row["seed"]: row["splits"][split]["top1"] for row in rows
                if row["variant"] == "random_init" and split in row["splits"]}
    return [row["splits"][split]["top1"] - baseline[row["seed"]] for row in rows
            if row["variant"] == variant and row["seed"] in baseline and split in row["splits"]]


def results_table(summary: dict[str, dict[str, dict[str, float]]], seeds: int, steps: int | str):
    """The experiment's rich table: one row per variant, mean +- std over seeds per metric."""

    columns = list(dict.fromkeys(c for metrics in summary.values() for c in metrics))
    table = Table(title=f"demo experiment: linear-probe top-1 %, mean ± std over {seeds} seed(s), "
                        f"{steps} pretraining steps",
                  caption="gap = val_correlated - val top-1: reliance on the spurious background (lower is "
                          "better); margin = val top-1 minus the default-init baseline's, paired by seed; the "
                          "supervised reference is trained end-to-end with labels, not probed")
    table.add_column("encoder")
    for column in columns:
        table.add_column(column.replace("_top1", " top-1").replace("background_gap", "gap"), justify="right")
    for variant, metrics in summary.items():
        table.add_row(LABELS[variant], *(cell(metrics.get(c), signed=c == "margin") for c in columns))
    return table


def selected_variants(variants: list[str] | tuple[str, ...] | None, log=print) -> list[str]:
    """The rows to run, in table order (None: all); the peer row is dropped, with one line, without lightly."""

    chosen = list(VARIANTS) if variants is None else list(variants)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "peer" in chosen and not lightly_available():
        log("peer row skipped: lightly is not installed (pip install 'relic-fast[peer]')")
        chosen.remove("peer")
    return [v for v in VARIANTS if v in chosen]


def cell(value: dict[str, float] | None, signed: bool = False) -> str:
    """A table cell: "mean ± std" (the mean signed for margins), or a dash where a row has no such metric."""
    if value is None:
        return "–"
    return f"{value['mean']:{'+' if signed else ''}.1f} ± {value['std']:.1f}"


def run_demo_experiment(config_path: Path | str | None, *, data_root: Path | None = None, out_dir: Path,
                        seeds: int | list[int] = 3, steps: int | None = None, variants: list[str] | None = None,
                        console=None) -> dict[str, Any]:
    """The baselines vs RELICv2 with and without saliency masking (and the peer and supervised rows), over
    `seeds` (a count from `train.seed`, or a list), `steps` pretraining steps each (None: the recipe's
    `train.max_steps`), `variants` a subset of `VARIANTS` (None: all); prints the table, writes
    `out_dir/experiment.json` (rewritten after every row, so an interrupted run keeps its rows) and
    returns {"rows", "summary", "settings"}.

    `data_root` defaults to the recipe's `data.path`, else the built-in demo dataset.
    """

    console = console or Console()
    config = load_config(config_path)
    if data_root is None:
        data_root = Path(config.data.path) if config.data.path else ensure_demo_dataset()
    seed_list = list(range(config.train.seed, config.train.seed + seeds)) if isinstance(seeds, int) else list(seeds)
    chosen = selected_variants(variants, log=console.print)
    if config.views.saliency_p == 0 and {"relicv2_saliency", "relicv2_no_saliency"} <= set(chosen):
        console.print("[yellow]warning:[/] the recipe's views.saliency_p is 0: both RELICv2 variants are the same")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"config": str(config_path) if config_path else None, "data": str(data_root), "seeds": seed_list,
                "steps": steps, "variants": chosen, "saliency_p": config.views.saliency_p,
                "eval": dataclasses.asdict(config.eval), "model": dataclasses.asdict(config.model)}
    rows: list[dict[str, Any]] = []
    for seed in seed_list:
        for variant in chosen:
            run_config = variant_config(config, variant, seed=seed, steps=steps, data_root=data_root)
            rows.append(run_variant(run_config, variant, data_root=data_root,
                                    run_dir=out_dir / f"seed{seed}" / variant, log=console.print))
            write_results(out_dir, rows, settings)
    if steps is None:  # what the runs did (the recipe's epochs or max_steps)
        steps = next((row["steps"] for row in rows if row.get("steps")), config.train.max_steps or "all")
    settings["steps"] = steps
    results = write_results(out_dir, rows, settings)
    console.print(results_table(results["summary"], len(seed_list), steps))
    return results


def write_results(out_dir: Path, rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Write {"rows", "summary", "settings"} to `out_dir/experiment.json` and return it."""
    results = {"rows": rows, "summary": summarize(rows), "settings": settings}
    (out_dir / "experiment.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results
