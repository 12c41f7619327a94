"""The verdict of `relic-fast profile`: input-bound or compute-bound, why, and what to change.

`build_report` takes the profiler's measurements (`relic_fast.profiler.profile_run`) and the config
and returns the JSON-ready report: the measurements, a verdict sentence and concrete suggestions
(threads, prefetch depth, GPU decode, view counts, output dtype, compile, precision). `print_report`
shows it as rich tables. The rule: the loop is input-bound when the loader alone delivers fewer
images/s than the step alone consumes, or when the loop still waits for data for more than
`WAIT_SHARE_LIMIT` of its time (the two compete for the CPU cores or the GPU, or the prefetch
queue is too shallow); otherwise it is compute-bound.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dali_pipelines.augmentations import ablation_advice
from relic_fast.environment import machine_info

WAIT_SHARE_LIMIT = 0.25
"""A loop that waits for data longer than this share of its time is input-bound whatever the rates say."""


def slowest_group(ablation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ablation row of the costliest switchable operator group above the noise (decode + crops excluded)."""
    rows = [row for row in (ablation or {}).get("groups", []) if not row["kept_only"] and not row["within_noise"]]
    return max(rows, key=lambda row: row["cost_ms_per_batch"]) if rows else None


def verdict(measurements: dict[str, Any]) -> dict[str, Any]:
    """{"bound": "input" | "compute", "text": one sentence with the rates and the slowest operator group}."""
    loader, model = measurements["loader_images_per_s"], measurements["consumption_images_per_s"]
    wait = measurements["loop"]["summary"]["data_wait_share"]
    slowest = slowest_group(measurements.get("ablation"))
    culprit = ""
    if slowest is not None:
        culprit = (f"; the slowest DALI operator group is {slowest['group']} "
                   f"({100 * slowest['share']:.0f}% of the loader's time)")
    if loader < model:
        return {"bound": "input", "text": f"input-bound: the loader delivers {loader:,.1f} img/s, the model "
                                          f"consumes {model:,.1f} img/s{culprit}"}
    if wait > WAIT_SHARE_LIMIT:
        return {"bound": "input", "text": f"input-bound under contention: the loader alone delivers {loader:,.1f} "
                                          f"img/s and the model alone consumes {model:,.1f} img/s, but the loop "
                                          f"waits for data {100 * wait:.0f}% of its time{culprit}"}
    return {"bound": "compute", "text": f"compute-bound: the model consumes {model:,.1f} img/s, the loader "
                                        f"delivers {loader:,.1f} img/s ({loader / model:.1f}x headroom); the loop "
                                        f"waits for data {100 * wait:.0f}% of its time"}


def input_suggestions(config, measurements: dict[str, Any]) -> list[str]:
    """What to change when the loop waits for data."""
    import torch

    data, views = config.data, config.views
    tips = []
    cores = os.cpu_count() or 1
    gpu_pipeline = measurements["pipeline_device"] == "gpu"
    if data.num_threads < cores and not (gpu_pipeline and data.num_threads >= 4):
        tips.append(f"raise data.num_threads (now {data.num_threads}; this machine has {cores} cores"
                    + ("; GPU pipelines rarely gain past 4" if gpu_pipeline else "") + ")")
    if measurements["loader_images_per_s"] >= measurements["consumption_images_per_s"]:
        tips.append(f"raise data.prefetch_queue_depth (now {data.prefetch_queue_depth}): the loader is fast "
                    "enough alone, so deeper prefetching absorbs its jitter")
    if not gpu_pipeline:
        tips.append("decode and augment on the GPU: data.device = \"gpu\" (nvJPEG + CUDA operators"
                    + ("" if torch.cuda.is_available() else ", on a machine with a GPU") + ")")
    slowest = slowest_group(measurements.get("ablation"))
    advice = ablation_advice(slowest["group"]) if slowest is not None else ""
    if advice:
        tips.append(advice)
    bare = [row for row in (measurements.get("ablation") or {}).get("groups", []) if row["kept_only"]]
    if bare and bare[0]["share"] > 0.5:
        tips.append(f"decoding and cropping alone take {100 * bare[0]['share']:.0f}% of the loader's time: store "
                    "the dataset at a smaller size (short side ~ 1.15 x large_size) or decode on the GPU")
    tips.append(f"fewer or smaller views: each image yields {views.num_large} x {views.large_size}px + "
                f"{views.num_small} x {views.small_size}px views and the loader's work grows with their pixels")
    return tips


def compute_suggestions(config, measurements: dict[str, Any]) -> list[str]:
    """What to change when the model is the bottleneck."""
    train, loss = config.train, config.loss
    cuda = measurements["device"].startswith("cuda")
    tips = []
    if cuda and train.compile == "off":
        tips.append("train.compile = \"auto\" (torch.compile of the step; ~1.5x on an H100, see GPU.md)")
    if not train.channels_last:
        tips.append("train.channels_last = true (NHWC convolutions)")
    if cuda and train.precision == "fp32":
        tips.append("train.precision = \"bf16\" (autocast)")
    if cuda and loss.implementation == "reference":
        tips.append("loss.implementation = \"auto\" (the fused Triton loss on CUDA)")
    if not cuda:
        tips.append("this is a CPU run: the step is expected to dominate (bf16 autocast is slower than fp32 on "
                    "CPUs without bf16 units); profile on the GPU for the real balance")
    headroom = measurements["loader_images_per_s"] / measurements["consumption_images_per_s"]
    if headroom > 1.5:
        tips.append(f"the loader has {headroom:.1f}x headroom: more large views cost the loader little "
                    "(the paper argues for more of them), or fewer data.num_threads free CPU for other work")
    tax = measurements.get("data_tax")
    if tax is not None and tax["tax"] > 0.05:
        tips.append(f"the pipeline's GPU work costs the step {100 * tax['tax']:.0f}%: fewer GPU-side "
                    "operators (e.g. jitter_order = \"fixed\") lower the tax")
    return tips


def build_report(config, settings, measurements: dict[str, Any]) -> dict[str, Any]:
    """The whole report: config, settings, machine, measurements, verdict and suggestions."""
    import dataclasses

    decision = verdict(measurements)
    tips = (input_suggestions if decision["bound"] == "input" else compute_suggestions)(config, measurements)
    method = ("DALI's Python API offers no per-operator timings (executor statistics hold memory figures only; "
              "per-operator time needs Nsight Systems NVTX ranges), so operator groups are costed by ablation: "
              "the loader's rate with the group switched off through the config.")
    return {"verdict": decision, "suggestions": tips, "measurements": measurements,
            "settings": dataclasses.asdict(settings), "config": config.to_dict(), "operator_cost_method": method,
            "machine": {**machine_info(), "load_average": round(os.getloadavg()[0], 2)}}


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the report as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def print_report(report: dict[str, Any], console=None) -> None:
    """Show the report: loop split, phases, rates, operator costs, verdict and suggestions."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = report["measurements"]
    summary = m["loop"]["summary"]
    loop = Table(title=f"training loop ({len(m['loop']['per_step'])} profiled steps, {m['device']})")
    for column in ("data wait ms (median)", "compute ms (median)", "data wait share", "loop img/s"):
        loop.add_column(column, justify="right")
    loop.add_row(f"{summary['data_ms_median']:,.1f}", f"{summary['compute_ms_median']:,.1f}",
                 f"{100 * summary['data_wait_share']:.0f}%", f"{summary['images_per_s']:,.1f}")
    console.print(loop)
    phases = Table(title="where a step's time goes (record_function labels, ms per step)")
    for column in ("phase", "host ms", "device ms"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for name, row in m["loop"]["phases_ms"].items():
        phases.add_row(name, f"{row['cpu_ms']:,.1f}", f"{row['device_ms']:,.1f}" if row["device_ms"] else "")
    console.print(phases)
    rates = Table(title="throughput (images/s)")
    rates.add_column("what")
    rates.add_column("images/s", justify="right")
    rates.add_row(f"loader alone ({m['pipeline_device']} pipeline)", f"{m['loader_images_per_s']:,.1f}")
    rates.add_row("step alone (synthetic views on the device)", f"{m['consumption_images_per_s']:,.1f}")
    rates.add_row("training loop", f"{summary['images_per_s']:,.1f}")
    if "data_tax" in m:
        rates.add_row("step with a pipeline feeding it (same pace)", f"{m['data_tax']['images_per_s_with_pipeline']:,.1f}"
                      f"  (data tax {100 * m['data_tax']['tax']:.1f}%)")
    console.print(rates)
    if m.get("ablation"):
        ablation = m["ablation"]
        costs = Table(title=f"DALI operator groups, by ablation (ms per batch each adds; full recipe "
                            f"{ablation['full_batch_ms']:,.1f} ms, noise +/- {ablation['noise_ms']:,.1f} ms)")
        for column in ("group", "loader img/s without it", "ms per batch", "share"):
            costs.add_column(column, justify="left" if column == "group" else "right")
        for row in ablation["groups"]:
            share = "within noise" if row["within_noise"] else f"{100 * row['share']:.0f}%"
            costs.add_row(row["group"], f"{row['images_per_s_without']:,.1f}", f"{row['cost_ms_per_batch']:,.1f}", share)
        console.print(costs)
    style = "bold red" if report["verdict"]["bound"] == "input" else "bold yellow"
    console.print(f"[{style}]{report['verdict']['text']}[/]")
    for tip in report["suggestions"]:
        console.print(f"  - {tip}")
    console.print(f"Chrome trace: {m['trace']} (open in chrome://tracing or ui.perfetto.dev)")
