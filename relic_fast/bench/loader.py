"""Loader throughput: the DALI RELICv2 pipeline against torchvision + PIL and against the decode ceiling.

For each view recipe ("<L>L[+<S>S]") and thread count, on the same JPEGs, one run measures:
  dali-cpu / dali-gpu  `dali_pipelines.loader.build_pretrain_loader` (the product's pipeline),
  torchvision          the same recipe in a torchvision DataLoader with as many workers as threads,
  decode-only          DALI reading + decoding only (per thread count): no recipe can beat it.
Each configuration warms up, then times `--repeats` windows of `--batches` batches; rows report the
median images/s with its interquartile spread, the ratio to torchvision and to the decode ceiling,
and the CPU milliseconds per image (all threads and worker processes) with its ratio to torchvision
("x torchvision cpu"): on a machine shared with other work, wall-clock rates drop with the load
while the CPU cost per image does not, so that column is the steadier judge of efficiency. A DALI
row also counts the operators of its recipe's graph, on the CPU and on the GPU (the GPU graph is
constructed for device 0, never built, so a CPU machine counts it too), with their kinds below the
table: the host cost per image grows with them, so a change to the graph shows its cost here.

    relic-fast bench loader --data DIR --json loader.json --png loader.png
    python -m benchmarks.bench_loader --data DIR   (the same options; without --data, a 400-image
                                                    photo corpus is generated once in the temp dir)
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from relic_fast.bench.benchmark import Benchmark, Report, UsageError
from relic_fast.bench.harness import Result, add_ratios, measure, table_columns
from dali_pipelines.recipe import DataConfig, ViewsConfig
from relic_fast.environment import endless
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.pretrain import operator_counts
from dali_pipelines.readers import ReadPlan
from relic_fast.bench.torchvision_recipe import build_torchvision_loader
from relic_fast.bench.decode_only import build_decode_pipeline, decode_step
from dali_pipelines.dataset import resolve_dataset
from relic_fast.bench.corpus import make_photo_corpus
from relic_fast.devices import torch_device_for

DEFAULT_RECIPES = ("2L", "4L+2S", "2L+6S")
PIPELINES = ("dali", "torchvision", "decode-only")


@dataclass(frozen=True)
class LoaderBench:
    """What one `bench_loader` run measures (the command-line options, typed)."""

    data: str
    """Folder tree or file list of JPEGs, read by every pipeline."""
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    """View recipes "<L>L[+<S>S]" to measure."""
    threads: tuple[int, ...] = (2,)
    """DALI CPU threads, and torchvision worker processes, per configuration."""
    batch_size: int = 32
    batches: int = 2
    """Batches per timed repeat (a window of several batches evens out workers finishing together)."""
    repeats: int = 5
    warmup: int = 2
    """Untimed batches before the first repeat (pipeline start-up, worker spawn, first decodes)."""
    device: str = "cpu"
    """Where DALI runs: "cpu" (dali-cpu, CPU decoder) or "gpu" (dali-gpu, mixed decoder, device 0)."""
    pipelines: tuple[str, ...] = PIPELINES
    large_size: int | None = None
    """Large view side override (None: ViewsConfig's 224); tiny values make quick test runs."""
    small_size: int | None = None
    """Small view side override (None: ViewsConfig's 96)."""
    baseline_blur: str = "torchvision"
    """Blur of the torchvision baseline: "torchvision" (exact, 23 taps) or "pil" (faster)."""
    seed: int = 0
    saliency_p: float = 0.0
    """p_m of the DALI pipeline's saliency blending (needs masks); the torchvision baseline has none."""
    masks: str = ""
    """Saliency-mask tree of `data` (`relic-fast masks` output); empty: the dataset's default, if any."""
    interpolation: str = "auto"
    """The crops' resampling (`views.interpolation`): auto (cubic on GPU, linear on CPU), linear or cubic."""


def parse_recipe(text: str) -> tuple[int, int]:
    """"4L+2S" -> (4, 2), "2L" -> (2, 0): the numbers of large and small views."""
    match = re.fullmatch(r"\s*(\d+)L(?:\s*\+\s*(\d+)S)?\s*", text, flags=re.IGNORECASE)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"recipe {text!r}: expected '<L>L' or '<L>L+<S>S' with L >= 1, e.g. '4L+2S'")
    return int(match.group(1)), int(match.group(2) or 0)


def views_for(recipe: str, bench: LoaderBench) -> ViewsConfig:
    """The default `ViewsConfig` with the recipe's view counts and any size overrides."""
    num_large, num_small = parse_recipe(recipe)
    changes = {"num_large": num_large, "num_small": num_small, "saliency_p": bench.saliency_p,
               "interpolation": bench.interpolation}
    if bench.large_size is not None:
        changes["large_size"] = bench.large_size
    if bench.small_size is not None:
        changes["small_size"] = bench.small_size
    return ViewsConfig(**changes)


def consume(batches: Iterator, count: int, to_device: Callable | None = None) -> Callable[[], None]:
    """A function that takes `count` batches from `batches` (the unit `time_it` times)."""

    def step() -> None:
        for _ in range(count):
            batch = next(batches)
            if to_device is not None:
                to_device(batch)

    return step


def cuda_copy(batch) -> None:
    """Move a torchvision batch to the GPU as a trainer would (non-blocking from pinned memory)."""
    batch.large.cuda(non_blocking=True)
    if batch.small is not None:
        batch.small.cuda(non_blocking=True)


def timed(bench: LoaderBench, pipeline: str, step: Callable[[], None], **fields) -> Result:
    """Measure `step` (which consumes `bench.batches` batches) into a loader `Result` row."""

    warmup_calls = -(-bench.warmup // bench.batches)  # ceil: at least `warmup` batches untimed
    extra = {"device": bench.device, "batches_per_repeat": bench.batches, **fields.pop("extra", {})}
    return measure(bench="loader", pipeline=pipeline, fn=step, items=bench.batches * bench.batch_size,
                   warmup=warmup_calls, repeats=bench.repeats, device="cuda" if bench.device == "gpu" else None,
                   count_cpu=True,
                   batch_size=bench.batch_size, extra=extra, **fields)


def view_sizes(views: ViewsConfig) -> str:
    """"4x224+2x96": the views one image yields."""
    text = f"{views.num_large}x{views.large_size}"
    return text + (f"+{views.num_small}x{views.small_size}" if views.num_small else "")


def graph_operators(dataset, views: ViewsConfig) -> dict[str, dict[str, int]]:
    """Operators by kind of the pretraining graph of `views` over `dataset`, for the CPU and the GPU pipeline."""
    plan = ReadPlan(dataset, np.arange(dataset.num_samples),
                    masks=views.saliency_p > 0 and dataset.format.can_read_masks(dataset))
    return {device: operator_counts(plan, views, device) for device in ("cpu", "gpu")}


def measure_dali(bench: LoaderBench, dataset, recipe: str, threads: int) -> Result:
    """Images/s of the product's DALI pipeline on `recipe` with `threads` CPU threads, and its graphs' operators."""

    views = views_for(recipe, bench)
    operators = graph_operators(dataset, views)
    data = DataConfig(path=bench.data, device=bench.device, num_threads=threads)
    loader = build_pretrain_loader(dataset, views, data, batch_size=bench.batch_size, seed=bench.seed,
                                   device_id=0 if bench.device == "gpu" else None)
    step = consume(endless(loader), bench.batches)
    row = timed(bench, f"dali-{bench.device}", step, recipe=recipe, threads=threads,
                extra={"views": view_sizes(views), "output_dtype": "uint8",
                       "saliency_p": views.saliency_p, "interpolation": views.interpolation,
                       "operators": {device: sum(kinds.values()) for device, kinds in operators.items()},
                       "operators_by_kind": operators})
    del step, loader
    gc.collect()  # free the pipeline's threads and buffers before the next configuration runs
    return row


def measure_torchvision(bench: LoaderBench, dataset, recipe: str, threads: int) -> Result:
    """Images/s of the torchvision + PIL baseline on `recipe` with `threads` worker processes."""

    views = views_for(recipe, bench)
    files = [dataset.root / f for f in dataset.files]
    loader = build_torchvision_loader(files, dataset.labels, views, batch_size=bench.batch_size,
                                      num_workers=threads, seed=bench.seed, blur=bench.baseline_blur,
                                      pin_memory=bench.device == "gpu")
    step = consume(endless(loader), bench.batches, cuda_copy if bench.device == "gpu" else None)
    row = timed(bench, "torchvision", step, recipe=recipe, threads=threads,
                extra={"views": view_sizes(views), "output_dtype": "fp32", "blur": bench.baseline_blur})
    del step, loader
    gc.collect()  # shuts the worker processes down: no idle prefetching during the next measurement
    return row


def measure_decode(bench: LoaderBench, dataset, threads: int) -> Result:
    """Images/s of DALI reading + decoding the same files: the ceiling for any recipe."""

    pipe = build_decode_pipeline(dataset.root, dataset.files, batch_size=bench.batch_size,
                                 num_threads=threads, device_id=0 if bench.device == "gpu" else None,
                                 seed=bench.seed)
    row = timed(bench, "decode-only", decode_step(pipe, bench.batches), threads=threads,
                extra={"decoder": "mixed" if bench.device == "gpu" else "cpu"})
    del pipe
    gc.collect()
    return row


def run(bench: LoaderBench, *, console=None) -> list[Result]:
    """Measure every (pipeline, recipe, threads) configuration of `bench`; rows with ratios filled."""

    dataset = resolve_dataset(bench.data, masks=bench.masks)
    if bench.saliency_p > 0 and dataset.mask_root is None:
        raise ValueError(f"--saliency-p {bench.saliency_p} needs saliency masks for {bench.data}: "
                         "compute them with `relic-fast masks DATA --out MASKS` and pass --masks MASKS")
    if not dataset.format.image_files:
        raise ValueError("bench_loader compares readers on a folder tree or a file list; "
                         f"{bench.data} holds WebDataset shards")
    if dataset.num_samples < bench.batch_size:
        raise ValueError(f"{dataset.num_samples} images in {bench.data}: fewer than one batch of {bench.batch_size}")
    rows = []
    for threads in bench.threads:
        if "decode-only" in bench.pipelines:
            rows.append(measure_decode(bench, dataset, threads))
        for recipe in bench.recipes:
            if "dali" in bench.pipelines:
                rows.append(measure_dali(bench, dataset, recipe, threads))
            if "torchvision" in bench.pipelines:
                rows.append(measure_torchvision(bench, dataset, recipe, threads))
            if console is not None:
                console.log(f"measured {recipe} with {threads} threads")
    rows = add_ratios(rows, baseline="torchvision", match=("recipe", "threads"))
    rows = add_ratios(rows, baseline="torchvision", match=("recipe", "threads"), metric="cpu")
    return add_ratios(rows, baseline="decode-only", match=("threads",))


def default_corpus(count: int = 400) -> Path:
    """The benchmark photo corpus in the temp dir, generated on first use (deterministic)."""

    out = Path(tempfile.gettempdir()) / f"relic-fast-bench-corpus-{count}"
    if len(list(out.glob("*/*.jpg"))) != count:
        make_photo_corpus(out, count=count)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The loader benchmark's options (the fields of `LoaderBench`)."""
    add = parser.add_argument
    add("--data", help="folder tree or file list of JPEGs (default: a generated 400-photo corpus)")
    add("--recipe", dest="recipes", nargs="+", default=list(DEFAULT_RECIPES), help="view recipes, e.g. 4L+2S 2L")
    add("--threads", nargs="+", type=int, default=[os.cpu_count() or 1],
        help="DALI threads = torchvision workers (default: CPU count)")
    add("--batch-size", type=int, default=32)
    add("--batches", type=int, default=2, help="batches per timed repeat (default 2)")
    add("--repeats", type=int, default=5, help="timed repeats per configuration (default 5)")
    add("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    add("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where DALI runs (default auto)")
    add("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    add("--large-size", type=int, help="override the large view side (tiny runs)")
    add("--small-size", type=int, help="override the small view side (tiny runs)")
    add("--baseline-blur", choices=("torchvision", "pil"), default="torchvision",
        help="blur op of the torchvision baseline (pil: PIL's faster approximation)")
    add("--seed", type=int, default=0)
    add("--saliency-p", type=float, default=0.0,
        help="p_m: share of images whose background the DALI pipeline swaps (needs masks; default 0)")
    add("--masks", default="", help="saliency-mask tree of --data (from `relic-fast masks`)")
    add("--interpolation", choices=("auto", "linear", "cubic"), default="auto",
        help="crop resampling of the DALI pipeline (auto: cubic on GPU, linear on CPU)")


def run_from_args(args: argparse.Namespace, console) -> Report:
    """`relic-fast bench loader`: every configuration the options describe, on `--data` or the default corpus."""
    for recipe in args.recipes:
        try:
            parse_recipe(recipe)  # fail before any measurement on a typo
        except ValueError as err:
            raise UsageError(str(err)) from err
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        console.print(f"[yellow]warning:[/] load average {load:.1f} on {os.cpu_count()} CPUs: "
                      "other processes compete with the measured loaders, CPU figures will be low")
    data = args.data or str(default_corpus())
    bench = LoaderBench(data=data, recipes=tuple(args.recipes), threads=tuple(args.threads),
                        batch_size=args.batch_size, batches=args.batches, repeats=args.repeats,
                        warmup=args.warmup, pipelines=tuple(args.pipelines),
                        device="gpu" if torch_device_for(args.device).type == "cuda" else "cpu",
                        large_size=args.large_size, small_size=args.small_size,
                        baseline_blur=args.baseline_blur, seed=args.seed, saliency_p=args.saliency_p,
                        masks=args.masks, interpolation=args.interpolation)
    return Report(run(bench, console=console), f"loader throughput: {data}, batch {bench.batch_size}, {bench.device}")


def operators_cell(row: Result) -> str:
    """"CPU / GPU" operators of a DALI row's graphs ("" for other rows)."""
    counts = row.extra.get("operators")
    return f"{counts['cpu']} / {counts['gpu']}" if counts else ""


def show(report: Report, console) -> None:
    """The harness table with each DALI row's operators (CPU graph / GPU graph) next to its rates, then the
    operators by kind of each DALI row's graphs."""
    from rich.table import Table

    table = Table(title=report.title)
    columns = table_columns(report.rows) + [("operators CPU / GPU graph", operators_cell)]
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("pipeline", "recipe") else "right")
    for row in report.rows:
        table.add_row(*(cell(row) for _, cell in columns))
    console.print(table)
    for row in report.rows:
        counts = row.extra.get("operators_by_kind")
        if counts:
            kinds = Table(title=f"operators by kind: {row.pipeline} {row.recipe} ({row.extra['views']})")
            for header in ("kind", *counts):
                kinds.add_column(header, justify="left" if header == "kind" else "right")
            for kind in dict.fromkeys(kind for by_kind in counts.values() for kind in by_kind):
                kinds.add_row(kind, *(str(by_kind.get(kind, 0)) for by_kind in counts.values()))
            kinds.add_row("all", *(str(sum(by_kind.values())) for by_kind in counts.values()))
            console.print(kinds)


BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run_from_args,
                      chart_title="loader images/s", show=show)
