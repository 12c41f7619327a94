"""End-to-end training throughput: the real trainer (`relic-fast pretrain`'s loop) fed three ways.

One process, one compiled step, three feeds, so the rows differ only in where the views come from:
  trainer + dali-<device>   the trainer as `relic-fast pretrain` runs it, its own DALI pipeline
                            (GPU when the recipe's `data.device` resolves there);
  trainer + synthetic       the trainer's step on views already on the device: the consumption
                            rate, i.e. what a free data pipeline would give (the baseline);
  trainer + torchvision     the same loop fed by the torchvision + PIL DataLoader (the recipe of
                            `relic_fast.bench.torchvision_recipe`, one worker per core by default).
The loop rates come from the trainer's own log windows (`Trainer.run_steps` with `--window` steps between
two host syncs); the first window holds compilation and pipeline start-up and is dropped. One more row times
the compile warm-up (process start to the end of the first step) and counts the graphs torch.compile
built after that first step (recompilations; the goal is 0).

    relic-fast bench train --config configs/imagenet_resnet50.toml --data DIR --json train.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from relic_fast.bench.benchmark import Benchmark, Report, UsageError
from relic_fast.bench.loader import view_sizes
from relic_fast.bench.harness import Result, add_ratios, quartiles
from relic_fast.environment import peak_memory_gib
from relic_fast.profiler import synthetic_rate
from relic_fast.bench.torchvision_recipe import build_torchvision_loader
from relic_fast.trainer import Trainer
from relic_fast.config import ConfigError, load_run_config

BASELINE = "trainer + synthetic"


def window_rates(metrics_path: Path, first_step: int) -> list[dict[str, Any]]:
    """The trainer's log records (images/s, data wait) written after step `first_step`, in order."""
    if not metrics_path.exists():
        return []
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [r for r in records if "images_per_s" in r and r["step"] > first_step]


def run_windows(trainer: Trainer, loader: Iterable[Any] | None, *, window: int, windows: int) -> list[dict[str, Any]]:
    """Run the trainer's loop (`Trainer.run_steps`) on `loader` (None: its own) for `windows + 1` log windows of
    `window` steps; return the records of the last `windows` (the first one absorbs start-up: compilation,
    worker spawn)."""
    start = trainer.step
    trainer.run_steps(window * (windows + 1), loader, log_every=window)
    return window_rates(trainer.out_dir / "metrics.jsonl", start + window)


def rate_row(pipeline: str, rates: Sequence[float], batch: int, recipe: str, extra: dict[str, Any]) -> Result:
    """A row of several images/s measurements: the median, its quartile spread (`quartiles`) and ms per batch."""
    median = statistics.median(rates)
    return Result(bench="train", pipeline=pipeline, recipe=recipe, batch_size=batch, images_per_s=median,
                  images_per_s_spread=quartiles(rates), ms=1e3 * batch / median, repeats=len(rates),
                  extra=extra)


def loop_row(pipeline: str, records: list[dict[str, Any]], batch: int, recipe: str, **extra: Any) -> Result:
    """A row from the steady log windows: median images/s, quartile spread, mean data-wait share."""
    if not records:
        raise RuntimeError(f"{pipeline}: the trainer logged no steady window")
    wait = statistics.mean(r["data_wait_pct"] for r in records)
    return rate_row(pipeline, [r["images_per_s"] for r in records], batch, recipe, {"data_wait_pct": wait, **extra})


def synthetic_row(trainer, *, steps: int, repeats: int, recipe: str) -> Result:
    """The trainer's step on synthetic views already on the device (no data at all): `repeats` timings."""

    rates = [synthetic_rate(trainer, steps) for _ in range(repeats)]
    return rate_row(BASELINE, rates, trainer.config.train.batch_size, recipe, {"steps_per_repeat": steps})


def torchvision_loader(trainer, workers: int):
    """The torchvision + PIL baseline loader over the trainer's dataset and recipe (pinned on CUDA)."""

    dataset = trainer.dataset
    if not dataset.format.image_files:
        raise ValueError("the torchvision feed reads a folder tree or file list, not WebDataset shards")
    files = [dataset.root / f for f in dataset.files]
    return build_torchvision_loader(files, dataset.labels, trainer.config.views,
                                    batch_size=trainer.config.train.batch_size, num_workers=workers,
                                    seed=trainer.config.train.seed,
                                    pin_memory=trainer.world.device.type == "cuda")


FEEDS = ("dali", "synthetic", "torchvision")


def run(config, out_dir: Path, *, feeds: Sequence[str] = ("dali", "synthetic"), window: int = 10, windows: int = 4,
        synthetic_steps: int = 10, synthetic_repeats: int = 3, torchvision_workers: int = 1,
        torchvision_window: int | None = None, console=None) -> list[Result]:
    """Measure the trainer fed by each of `feeds` (in FEEDS order), plus its compile warm-up.

    The torchvision feed's window defaults to `torchvision_workers` steps: its workers deliver their
    batches in waves of one batch each, so a shorter window would time batches prefetched earlier."""

    unknown = set(feeds) - set(FEEDS)
    if unknown or not feeds:
        raise ValueError(f"feeds {sorted(unknown) or '(none)'}: choose from {', '.join(FEEDS)}")
    say = console.log if console is not None else print
    trainer = Trainer(config, out_dir)  # no validator: `run_steps` neither checkpoints nor validates
    if trainer.world.distributed:
        raise RuntimeError("bench train runs a single process; start it without torchrun")
    views, batch, device = config.views, config.train.batch_size, trainer.world.device
    recipe = view_sizes(views)
    rows = []
    if "dali" in feeds:
        name = f"trainer + dali-{'gpu' if trainer.plan.dali_device_id is not None else 'cpu'}"
        say(f"{name}: {windows + 1} windows of {window} steps (the first one absorbs compilation)")
        records = run_windows(trainer, None, window=window, windows=windows)
        rows.append(loop_row(name, records, batch, recipe, peak_gib=peak_memory_gib(device),
                             threads=config.data.num_threads))
    if "synthetic" in feeds:
        say(f"{BASELINE} views: {synthetic_repeats} x {synthetic_steps} steps")
        rows.append(synthetic_row(trainer, steps=synthetic_steps, repeats=synthetic_repeats, recipe=recipe))
    if "torchvision" in feeds:
        tv_window = torchvision_window or torchvision_workers
        say(f"trainer + torchvision ({torchvision_workers} workers): 2 windows of {tv_window} steps")
        records = run_windows(trainer, torchvision_loader(trainer, torchvision_workers), window=tv_window, windows=1)
        rows.append(loop_row("trainer + torchvision", records, batch, recipe, threads=torchvision_workers))
    rows = add_ratios(rows, baseline=BASELINE, match=("recipe",))
    if trainer.warmup.values:
        warmup = trainer.warmup.values
        rows.append(Result(bench="train", pipeline="compile warm-up", recipe=recipe, batch_size=batch,
                           ms=1e3 * warmup["first_step_s"],
                           extra={"seconds": warmup["first_step_s"], "compiled_graphs": warmup["compiled_graphs"],
                                  "recompiles_after_first_step": trainer.warmup.recompiles(),
                                  "what": "process start to the end of the first training step"}))
    common = {"device": str(device), "precision": config.train.precision, "compile": config.train.compile,
              "channels_last": config.train.channels_last, "encoder": f"{config.model.encoder} {config.model.width}x",
              "saliency_p": views.saliency_p, "data": str(trainer.dataset.root)}
    return [dataclasses.replace(r, extra={**common, **r.extra}) for r in rows]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train benchmark's options: the recipe as for pretrain, the feeds, and how long each is timed."""
    add = parser.add_argument
    add("--config", "-c", type=Path, help="TOML recipe (see configs/); defaults apply to what it leaves out")
    add("--data", help="dataset, as for pretrain (default: the recipe's data.path, else the demo dataset)")
    add("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config key (repeatable), e.g. --set train.batch_size=128")
    add("--feeds", nargs="+", choices=FEEDS, default=["dali", "synthetic"],
        help="what feeds the trainer (default: dali synthetic); torchvision is slow: give it its own run")
    add("--window", type=int, default=10, help="steps per timed log window (default 10)")
    add("--windows", type=int, default=4, help="timed windows of the DALI-fed loop, after the first (default 4)")
    add("--synthetic-steps", type=int, default=10, help="steps per synthetic timing (default 10)")
    add("--synthetic-repeats", type=int, default=3, help="synthetic timings, median reported (default 3)")
    add("--torchvision-workers", type=int, default=0,
        help="DataLoader workers of the torchvision feed (default 0: one per CPU core)")
    add("--torchvision-window", type=int, default=0,
        help="steps per window of the torchvision feed (default 0: as many as workers, one wave of batches)")
    add("--out", type=Path, help="run folder for metrics.jsonl (default: a temporary folder)")


def run_from_args(args: argparse.Namespace, console) -> Report:
    """`relic-fast bench train`: the recipe's trainer fed by each of `--feeds`, in a run folder of its own."""
    for name in ("window", "windows", "synthetic_steps", "synthetic_repeats"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        config = load_run_config(args.config, args.overrides, data=args.data)
    except ConfigError as err:
        raise UsageError(f"config error: {err}") from err
    workers = args.torchvision_workers if args.torchvision_workers > 0 else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="relic-fast-bench-train-") as scratch:
        out_dir = args.out or Path(scratch)
        rows = run(config, out_dir, feeds=tuple(args.feeds), window=args.window, windows=args.windows,
                   synthetic_steps=args.synthetic_steps, synthetic_repeats=args.synthetic_repeats,
                   torchvision_workers=workers, torchvision_window=args.torchvision_window or None,
                   console=console)
    return Report(rows, f"training throughput: {config.model.encoder}, batch {config.train.batch_size}")


BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run_from_args)
