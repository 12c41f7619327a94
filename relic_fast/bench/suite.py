"""All throughput benchmarks into one folder: loader, training step and loss (JSON + PNG each), and a summary.

The loader runs on the step benchmark's view recipe, sizes and batch, so the summary can put the two
numbers that decide a training run side by side: images/s the DALI pipeline delivers and images/s
the step consumes (`relic-fast profile` measures the same balance inside a real run). Defaults are
each benchmark's own for the device: the GPU target on CUDA, small configurations on CPU.

    relic-fast bench all --out DIR [--device cpu] [--data JPEG_DIR]
    python -m benchmarks.bench_all --out benchmarks/results/cpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from relic_fast.bench import registry
from relic_fast.bench.benchmark import Benchmark, Report
from relic_fast.bench.harness import Result, plot_images_per_s
from relic_fast.bench.step import defaults_for
from relic_fast.devices import torch_device_for


def loader_args(step_bench, data: str | None, out: Path) -> list[str]:
    """bench_loader options: the step's recipe, sizes and batch, on the step's device."""
    args = ["--recipe", step_bench.views, "--large-size", str(step_bench.large_size),
            "--small-size", str(step_bench.small_size), "--batch-size", str(step_bench.batch_size),
            "--device", "gpu" if step_bench.device == "cuda" else "cpu",
            "--json", str(out / "loader.json"), "--png", str(out / "loader.png")]
    return args + (["--data", data] if data else [])


def best_rate(rows: Sequence[Result], prefix: str) -> Result | None:
    """The fastest row whose pipeline starts with `prefix` (None when there is none)."""
    rows = [r for r in rows if r.pipeline.startswith(prefix) and r.images_per_s is not None]
    return max(rows, key=lambda r: r.images_per_s) if rows else None


def summary(loader_rows: Sequence[Result], step_rows: Sequence[Result], loss_rows: Sequence[Result]) -> dict:
    """The headline: the fastest DALI loader and training step rows and whether the step would wait for data."""
    loader, step = best_rate(loader_rows, "dali"), best_rate(step_rows, "")
    head = {"loader": loader.to_dict() if loader else None, "step": step.to_dict() if step else None,
            "loss": [r.to_dict() for r in loss_rows]}
    if loader and step:
        head["loader_over_step"] = loader.images_per_s / step.images_per_s
        head["bound"] = "input" if loader.images_per_s < step.images_per_s else "compute"
    return head


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options: where the files go, the device, the loader's data and the torch threads."""
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest"), help="folder for the files")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--data", help="JPEG folder tree for the loader (default: the generated photo corpus)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the step and loss benchmarks "
                                                     "(default: torch's choice; 1 on a shared, busy CPU)")


def run_from_args(args: argparse.Namespace, console) -> Report:
    """Run the registered step, loader and loss benchmarks into `--out` (each prints its own table and writes
    its files), then the loss chart and summary.json; the report's rows are theirs, in that order."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = torch_device_for(args.device).type
    console.rule(f"training step ({device})")
    threads = ["--threads", str(args.threads)] if args.threads else []  # bench_step sets them for the loss too
    step_rows = registry.run("step", ["--device", device, *threads, "--json", str(out / "step.json"),
                                      "--png", str(out / "step.png")], prog="relic-fast bench step")
    console.rule("loader")
    loader_rows = registry.run("loader", loader_args(defaults_for(device), args.data, out),
                               prog="relic-fast bench loader")
    console.rule("loss")
    loss_rows = registry.run("loss", ["--device", device, "--json", str(out / "loss.json")],
                             prog="relic-fast bench loss")
    plot_images_per_s(loss_rows, out / "loss.png", title="RELICv2 loss forward + backward, samples/s")
    head = summary(loader_rows, step_rows, loss_rows)
    head["command"] = args.command_line
    (out / "summary.json").write_text(json.dumps(head, indent=2) + "\n")
    if "bound" in head:
        console.print(f"[bold]{head['bound']}-bound on this machine:[/] the DALI loader delivers "
                      f"{head['loader']['images_per_s']:,.1f} img/s ({head['loader']['pipeline']}), the step consumes "
                      f"{head['step']['images_per_s']:,.1f} img/s ({head['step']['pipeline']})")
    console.print(f"wrote {out}/: step, loader, loss (.json, .png) and summary.json")
    return Report([*step_rows, *loader_rows, *loss_rows], title=f"all benchmarks into {out}")


def tables_already_printed(report: Report, console) -> None:
    """The suite's presentation: nothing more, each benchmark printed its own table as it ran."""


BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run_from_args, json_option=False,
                      show=tables_already_printed)
