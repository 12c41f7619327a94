"""The demo experiment: does RELICv2 pretraining help, and does saliency masking reduce background reliance?

For each seed, pretrain the CPU demo recipe twice, with saliency masking (the recipe's
`views.saliency_p`) and without (`saliency_p = 0`), then linear-evaluate both encoders and a
randomly initialized one on the demo data's `val/` (backgrounds independent of the class) and
`val_correlated/` (backgrounds correlated like train). The result table gives mean +- std over
seeds of top-1 on each split and their gap (reliance on the spurious background).
The random-init encoder of a seed is built exactly as the trainer builds its online encoder for
that seed (`torch.manual_seed(seed)`, then `build_encoder`), so each comparison is paired: the same
starting weights, with and without pretraining.
A last row, the supervised reference (`relic_fast.evaluation.supervised`), trains that same starting
encoder end-to-end with the labels for the pretraining step budget, with plain SGD: what labels alone
teach this encoder in that many steps. It is a reference, not a ceiling: on the demo data (version 3)
124 plain-SGD steps leave it at chance while RELICv2's LARS learns (see the README's demo section).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from relic_fast.config import Config, load_config
from relic_fast.evaluation.runner import evaluate_encoder, random_init_encoder

VARIANTS = ("random_init", "relicv2_no_saliency", "relicv2_saliency", "supervised")
"""Rows of the result table, in order."""

LABELS = {"random_init": "random init", "relicv2_no_saliency": "RELICv2 (no saliency)",
          "relicv2_saliency": "RELICv2 + saliency", "supervised": "supervised reference (labels, same steps)"}


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
    """Pretrain (unless `random_init`) into `run_dir`, linear-evaluate the encoder; one result row."""
    from relic_fast.checkpoint import encoder_from_checkpoint

    row: dict[str, Any] = {"variant": variant, "seed": config.train.seed, "saliency_p": config.views.saliency_p}
    if variant == "supervised":
        from relic_fast.evaluation.supervised import supervised_reference

        result = supervised_reference(config, data_root)
        row.update(steps=result["steps"], saliency_p=None)
        return finish_row(row, result, log)
    if variant == "random_init":
        encoder = random_init_encoder(config)
    else:
        from relic_fast.trainer import pretrain

        summary = pretrain(config, out_dir=run_dir, resume=False)
        encoder, _ = encoder_from_checkpoint(summary["checkpoint"])
        row.update(final_loss=summary.get("final_loss"), steps=summary.get("steps"),
                   checkpoint=str(summary["checkpoint"]))
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
        summary[variant] = metrics
    return summary


def results_table(summary: dict[str, dict[str, dict[str, float]]], seeds: int, steps: int | str):
    """The experiment's rich table: one row per variant, mean +- std over seeds per metric."""
    from rich.table import Table

    columns = list(next(iter(summary.values())))
    table = Table(title=f"demo experiment: linear-probe top-1 %, mean ± std over {seeds} seed(s), "
                        f"{steps} pretraining steps",
                  caption="gap = val_correlated - val top-1: reliance on the spurious background (lower is "
                          "better); the supervised reference is trained end-to-end with labels, not probed")
    table.add_column("encoder")
    for column in columns:
        table.add_column(column.replace("_top1", " top-1").replace("background_gap", "gap"), justify="right")
    for variant, metrics in summary.items():
        table.add_row(LABELS[variant], *(f"{metrics[c]['mean']:.1f} ± {metrics[c]['std']:.1f}" for c in columns))
    return table


def run_demo_experiment(config_path: Path | str | None, *, data_root: Path | None = None, out_dir: Path,
                        seeds: int | list[int] = 3, steps: int | None = None, console=None) -> dict[str, Any]:
    """Random init vs RELICv2 with and without saliency masking, over `seeds` (a count from
    `train.seed`, or a list), `steps` pretraining steps each (None: the recipe's `train.max_steps`);
    prints the table, writes `out_dir/experiment.json` and returns {"rows", "summary", "settings"}.

    `data_root` defaults to the recipe's `data.path`, else the built-in demo dataset.
    """
    from rich.console import Console

    console = console or Console()
    config = load_config(config_path)
    if data_root is None:
        from relic_fast.demo_data import ensure_demo_dataset
        data_root = Path(config.data.path) if config.data.path else ensure_demo_dataset()
    seed_list = list(range(config.train.seed, config.train.seed + seeds)) if isinstance(seeds, int) else list(seeds)
    if config.views.saliency_p == 0:
        console.print("[yellow]warning:[/] the recipe's views.saliency_p is 0: both RELICv2 variants are the same")
    out_dir = Path(out_dir)
    rows = []
    for seed in seed_list:
        for variant in VARIANTS:
            run_config = variant_config(config, variant, seed=seed, steps=steps, data_root=data_root)
            rows.append(run_variant(run_config, variant, data_root=data_root,
                                    run_dir=out_dir / f"seed{seed}" / variant, log=console.print))
    summary = summarize(rows)
    if steps is None:  # what the runs did (the recipe's epochs or max_steps)
        steps = next((row["steps"] for row in rows if row.get("steps")), config.train.max_steps or "all")
    console.print(results_table(summary, len(seed_list), steps))
    results = {"rows": rows, "summary": summary,
               "settings": {"config": str(config_path) if config_path else None, "data": str(data_root),
                            "seeds": seed_list, "steps": steps, "saliency_p": config.views.saliency_p,
                            "eval": dataclasses.asdict(config.eval), "model": dataclasses.asdict(config.model)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "experiment.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results
