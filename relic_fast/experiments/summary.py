"""The experiment's summary over seeds and its printed table.

Each result row gives one table entry per scored network: its probe (`splits`), and for a row that also
reports its own classifier head (the supervised reference: `head_splits`) a second entry `<variant>_head`.
Per entry: mean and sample standard deviation over seeds of each split's top-1, of the background gap, of
the margins over the default-init baseline on `val` and on `test` (paired by seed), and of the training time.
A single seed has no spread: its std is None and its cell reads `n=1`.
"""

from __future__ import annotations

import statistics
from typing import Any

from rich.table import Table

BASELINE = "random_init"
"""The entry every margin is measured from."""

MARGIN_SPLITS = {"margin": "val", "test_margin": "test"}
"""Margin metrics and the split each compares on."""


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (None for a single value: no spread measured) and count."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def entries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's entries of `rows`: each row's probe, and its own head where it reports one."""
    out = []
    for row in rows:
        out.append({"key": row["variant"], "seed": row["seed"], "splits": row["splits"],
                    "background_gap": row.get("background_gap"), "train_s": row.get("train_s")})
        if row.get("head_splits"):
            out.append({"key": f"{row['variant']}_head", "seed": row["seed"], "splits": row["head_splits"],
                        "background_gap": row.get("head_background_gap"), "train_s": row.get("train_s")})
    return out


def paired_margins(scored: list[dict[str, Any]], key: str, split: str) -> list[float]:
    """Per seed with both entries: `key`'s top-1 on `split` minus the default-init baseline's."""
    baseline = {e["seed"]: e["splits"][split]["top1"] for e in scored if e["key"] == BASELINE and split in e["splits"]}
    return [e["splits"][split]["top1"] - baseline[e["seed"]] for e in scored
            if e["key"] == key and e["seed"] in baseline and split in e["splits"]]


def summarize(rows: list[dict[str, Any]], order: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """Per entry (in `order` of variants, else as the rows come): mean/std over seeds of each split's top-1,
    the background gap, the margins and `train_s`."""
    scored = entries(rows)
    keys = list(dict.fromkeys(e["key"] for e in scored))
    if order is not None:
        rank = {name: i for i, name in enumerate(order)}
        keys.sort(key=lambda k: (rank.get(k.removesuffix("_head"), len(rank)), k.endswith("_head")))
    summary: dict[str, dict[str, dict]] = {}
    for key in keys:
        mine = [e for e in scored if e["key"] == key]
        metrics = {f"{split}_top1": mean_std([e["splits"][split]["top1"] for e in mine])
                   for split in mine[0]["splits"]}
        if all(e["background_gap"] is not None for e in mine):
            metrics["background_gap"] = mean_std([e["background_gap"] for e in mine])
        for metric, split in MARGIN_SPLITS.items():
            margins = paired_margins(scored, key, split)
            if margins and key != BASELINE:
                metrics[metric] = mean_std(margins)
        if all(e["train_s"] is not None for e in mine):
            metrics["train_s"] = mean_std([e["train_s"] for e in mine])
        summary[key] = metrics
    return summary


def cell(value: dict[str, Any] | None, *, signed: bool = False, digits: int = 1) -> str:
    """A table cell: "mean ± std", "mean (n=1)" for one seed, or a dash where an entry has no such metric."""
    if value is None:
        return "–"
    mean = f"{value['mean']:{'+' if signed else ''}.{digits}f}"
    return f"{mean} (n=1)" if value["std"] is None else f"{mean} ± {value['std']:.{digits}f}"


def column_title(metric: str) -> str:
    """A metric's column heading."""
    titles = {"background_gap": "gap", "margin": "margin", "test_margin": "test margin", "train_s": "train s"}
    return titles.get(metric, metric.replace("_top1", " top-1"))


def results_table(summary: dict[str, dict[str, dict]], labels: dict[str, str], seeds: int, steps: int | str):
    """The experiment's rich table: one line per entry, mean ± std over seeds per metric."""
    columns = list(dict.fromkeys(c for metrics in summary.values() for c in metrics))
    columns.sort(key=lambda c: c == "train_s")  # the time last
    table = Table(title=f"experiment: linear-probe top-1 %, mean ± std over {seeds} seed(s), {steps} "
                        f"pretraining steps (choose on val, report test)",
                  caption="gap = val_correlated - val top-1: reliance on the spurious background (lower is "
                          "better); margin, test margin = top-1 minus the default-init baseline's on val, test, "
                          "paired by seed; train s = wall-clock seconds of training (the supervised reference: "
                          "its whole learning-rate grid)")
    table.add_column("encoder")
    for column in columns:
        table.add_column(column_title(column), justify="right")
    for key, metrics in summary.items():
        table.add_row(labels.get(key, key), *(cell(metrics.get(c), signed="margin" in c,
                                                   digits=0 if c == "train_s" else 1) for c in columns))
    return table
