"""Every benchmark, named once: `relic-fast bench NAME` and `python -m benchmarks.bench NAME` read this list.

A line gives the command name, the module under `relic_fast.bench` that defines `BENCHMARK` (a
`relic_fast.bench.benchmark.Benchmark`) and the one-line help of `relic-fast bench --help`. The help
line lives here rather than on the object so that the CLI can list the benchmarks without importing
them (they import torch and DALI; `relic-fast --help` must not). Adding a benchmark is one new module
plus one line in `REGISTRY`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Registered:
    """A benchmark's entry: command name, module (under `relic_fast.bench`) and one-line help."""

    name: str
    module: str
    summary: str


REGISTRY: tuple[Registered, ...] = (
    Registered("loader", "loader", "Loader images/s: DALI pipeline vs torchvision + PIL vs DALI decode-only, per recipe and thread count (--help for options)."),
    Registered("step", "step", "Training-step images/s on synthetic views: eager vs compiled, channels-last vs contiguous, fp32 vs bf16 (--help for options)."),
    Registered("train", "train", "The real trainer's images/s fed by its DALI pipeline, by synthetic views and by torchvision, plus compile warm-up (--help for options)."),
    Registered("memory", "memory", "Peak memory of a training step with and without activation checkpointing, per batch size (--help for options)."),
    Registered("loss", "loss", "RELICv2 loss forward + backward: reference vs compiled vs fused Triton kernel, per batch size (--help for options)."),
    Registered("all", "suite", "Loader, step and loss benchmarks with the device's defaults into one folder (--out DIR; --help for options)."),
)


def registered(name: str) -> Registered:
    """The entry called `name`; a ValueError naming the known ones otherwise."""
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise ValueError(f"no benchmark {name!r}; choose from {', '.join(e.name for e in REGISTRY)}")


def load(name: str) -> Any:
    """The `Benchmark` object of `name`, its module imported now (torch and DALI with it)."""
    return importlib.import_module(f"relic_fast.bench.{registered(name).module}").BENCHMARK


def run(name: str, argv: Sequence[str] | None, prog: str) -> Any:
    """Run benchmark `name` on the command-line arguments `argv` (the one harness main); returns its rows."""
    return load(name).main(list(argv) if argv is not None else None, prog=prog)


def script_main(name: str | None = None) -> Any:
    """Entry of the `benchmarks/` scripts: `python -m benchmarks.bench NAME [options]` (name from the
    command line) or `python -m benchmarks.bench_NAME [options]` (a script that passes its name)."""
    argv = sys.argv[1:]
    if name is None:
        if not argv or argv[0].startswith("-"):
            names = ", ".join(e.name for e in REGISTRY)
            sys.exit(f"usage: python -m benchmarks.bench NAME [options]   (NAME: {names}; NAME --help for its options)")
        name, argv = argv[0], argv[1:]
        try:
            registered(name)
        except ValueError as err:
            sys.exit(str(err))
        return run(name, argv, prog=f"python -m benchmarks.bench {name}")
    return run(name, argv, prog=f"python -m benchmarks.bench_{name}")
