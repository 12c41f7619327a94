"""The experiment: what does RELICv2 pretraining learn beyond random features, and what does each of its
ingredients buy?

For each seed (seed by seed, all rows of one seed before the next) every chosen row of
`relic_fast.experiments.variants.VARIANTS` is trained and its encoder probed the same way on every labelled
split beside `train/`: `val` (where settings are chosen), `test` (held out: where results are reported) and,
on the demo data, `val_correlated` (backgrounds correlated like train; its gap to `val` is the reliance on
the spurious background). The table gives mean ± std over seeds (`relic_fast.experiments.summary`).

`out_dir/experiment.json` is rewritten after every finished row, with the provenance of the results
(`relic_fast.provenance`: the whole resolved recipe, its plan, the config file's path and SHA-256, the
commit and whether the tree was dirty). Run again with the same `out_dir`, the experiment keeps the rows
already there and runs only the missing ones (a pretraining row interrupted half-way continues from its
last checkpoint), provided the recipe, data and step cap are the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from relic_fast.config import load_config
from relic_fast.demo_data import ensure_demo_dataset
from relic_fast.experiments.summary import results_table, summarize
from relic_fast.experiments.variants import VARIANTS, RowContext, labels, run_row, variant_config
from relic_fast.provenance import provenance, provenance_warnings, write_results_json

RESULTS_FILE = "experiment.json"


class ExperimentMismatch(ValueError):
    """`out_dir` holds rows of another recipe, dataset or step cap: they cannot share one table."""


def selected_variants(variants: list[str] | tuple[str, ...] | None, log=print) -> list[str]:
    """The rows to run, in table order (None: all); a row that cannot run here (lightly missing) is dropped
    with one line."""
    chosen = list(VARIANTS) if variants is None else list(variants)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for name in list(chosen):
        reason = VARIANTS[name].missing()
        if reason is not None:
            log(f"{name} row skipped: {reason}")
            chosen.remove(name)
    return [v for v in VARIANTS if v in chosen]


def earlier_rows(out_dir: Path, record: dict[str, Any], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an earlier run into `out_dir` (none without its JSON); ExperimentMismatch when that run had
    another resolved recipe, data root or step cap."""
    path = out_dir / RESULTS_FILE
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    before = saved.get("provenance", {}).get("config")
    now = json.loads(json.dumps(record["config"], default=str))
    changed = [key for key in ("data", "max_steps") if saved["settings"].get(key) != settings[key]]
    if before != now or changed:
        what = ", ".join(changed + (["the resolved recipe"] if before != now else []))
        raise ExperimentMismatch(f"{path} holds rows of another experiment ({what} differ): give another --out, "
                                 f"or remove that folder to start again")
    return saved["rows"]


def run_demo_experiment(config_path: Path | str | None, *, data_root: Path | None = None, out_dir: Path,
                        seeds: int | list[int] = 3, steps: int | None = None, variants: list[str] | None = None,
                        console=None) -> dict[str, Any]:
    """Run `variants` (a subset of `VARIANTS`, None: all) over `seeds` (a count from `train.seed`, or a list),
    `steps` pretraining steps each (None: the recipe's `train.max_steps`); skip rows `out_dir` already holds;
    print the table, write `out_dir/experiment.json` after every row and return {"rows", "summary",
    "settings", "provenance"}. `data_root` defaults to the recipe's `data.path`, else the built-in demo dataset.
    """
    console = console or Console()
    config = load_config(config_path)
    if data_root is None:
        data_root = Path(config.data.path) if config.data.path else ensure_demo_dataset()
    seed_list = list(range(config.train.seed, config.train.seed + seeds)) if isinstance(seeds, int) else list(seeds)
    chosen = selected_variants(variants, log=console.print)
    if config.views.saliency_p == 0 and len({"relicv2_saliency", "relicv2_no_saliency"} & set(chosen)) == 2:
        console.print("[yellow]warning:[/] the recipe's views.saliency_p is 0: both RELICv2 variants are the same")
    record = provenance(config, config_path)
    for warning in provenance_warnings(record):
        console.print(f"[yellow]warning:[/] {warning}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"config": record["config_file"]["path"] if record["config_file"] else None, "data": str(data_root),
                "seeds": seed_list, "max_steps": steps, "steps": steps, "variants": chosen}
    rows = earlier_rows(out_dir, record, settings)
    done = {(row["variant"], row["seed"]) for row in rows}
    code = {"commit": record["git"]["commit"], "dirty": record["git"]["dirty"]}
    for seed in seed_list:
        for name in chosen:
            if (name, seed) in done:
                console.print(f"{name} (seed {seed}): already in {out_dir / RESULTS_FILE}, skipped")
                continue
            console.print(f"[bold]{name} (seed {seed})[/]: {VARIANTS[name].label}")
            run_config, overrides = variant_config(config, VARIANTS[name], seed=seed, steps=steps,
                                                   data_root=data_root, log=console.print)
            context = RowContext(data_root=data_root, run_dir=out_dir / f"seed{seed}" / name, log=console.print)
            row = {**run_row(run_config, VARIANTS[name], overrides, context), "code": code}
            console.print(f"{VARIANTS[name].label} (seed {seed}): " + ", ".join(
                f"{split} top-1 {scores['top1']:.1f}%" for split, scores in row["splits"].items()))
            rows.append(row)
            write_results(out_dir, rows, settings, record)
    if steps is None:  # what the runs did (the recipe's epochs or max_steps)
        settings["steps"] = next((row["steps"] for row in rows if row.get("steps")), config.train.max_steps or "all")
    results = write_results(out_dir, rows, settings, record)
    seeds_run = len({row["seed"] for row in rows})
    console.print(results_table(results["summary"], labels(), seeds_run, settings["steps"]))
    return results


def write_results(out_dir: Path, rows: list[dict[str, Any]], settings: dict[str, Any],
                  record: dict[str, Any]) -> dict[str, Any]:
    """Write {"rows", "summary", "settings", "provenance"} to `out_dir/experiment.json` and return it."""
    results = {"rows": rows, "summary": summarize(rows, order=list(VARIANTS)), "settings": settings}
    write_results_json(out_dir / RESULTS_FILE, results, record)
    return {**results, "provenance": record}
