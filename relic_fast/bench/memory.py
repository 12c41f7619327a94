"""Peak memory of one training step, with and without activation checkpointing, per batch size.

Each row runs the trainer's own step (`relic_fast.step.train_step` on synthetic views, built by
`relic_fast.synthetic.standalone_context` exactly as `bench step` builds it) once untimed, so that
gradients, LARS momentum and (on CUDA) compiled graphs exist, then measures a second step:

- CUDA: `torch.cuda.max_memory_allocated` over the step; `static_gib` is what was allocated before it
  (weights, optimizer state, views), `total_gib` the peak: the figure that must fit the card.
- CPU: the CPU allocator's own accounting, read through `torch.profiler(profile_memory=True)`: every
  allocation and free made during the step, in order; `step_gib` is the peak of the running sum, i.e.
  the memory the step needs on top of what was alive before it (the CPU analogue of CUDA's
  peak-minus-start, and immune to what RSS adds: allocator caching, fragmentation, other threads'
  arenas, pages never touched). `static_gib` counts the tensors that live across steps (weights,
  buffers, optimizer state, views; not the gradients, which the step frees and reallocates),
  so `total_gib` = static + step is comparable with CUDA's peak.

`per_image_mib` is the slope of the step's memory over the batch sizes measured (fixed costs cancel),
and `ratio` the checkpointed slope over the plain one: the fraction of activation memory that
checkpointing keeps, the number the memory estimate of docs/performance.md scales by.

    relic-fast bench memory --device cpu --batch-sizes 2 4 --json memory.json
    python -m benchmarks.bench_memory ...   (the same options)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import time
from typing import Any, Callable, Sequence

from relic_fast.bench.benchmark import Benchmark, Report
from relic_fast.bench.step import StepBench, configs_for, view_sizes
from relic_fast.devices import torch_device_for
from relic_fast.bench.harness import Result
from relic_fast.environment import peak_memory_gib, reset_peak_memory, synchronize
from relic_fast.step import train_step
from relic_fast.synthetic import standalone_context, synthetic_inputs

VARIANTS = ("plain", "checkpointed")
"""`plain`: every activation kept for backward; `checkpointed`: `model.activation_checkpointing = true`."""


def cpu_step_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by `fn` on top of what was allocated before it, from the profiler's allocation
    events (the CPU allocator reports each allocation and free with its size)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    running = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        running += size  # frees are negative; frees of blocks allocated before the profile are not reported
        peak = max(peak, running)
    return peak


def live_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if tensor is not None and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def static_tensors(context, inputs):
    """What lives across steps: weights, buffers, optimizer state and the views (not the gradients)."""
    import torch

    yield from context.online_module.parameters()
    yield from context.online_module.buffers()
    yield from context.target.parameters()
    yield from context.target.buffers()
    for state in context.optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    yield inputs.large
    yield inputs.small


def measure_row(bench: StepBench, variant: str, batch_size: int, precision: str, compiled: bool) -> Result:
    """One step's peak memory (and its milliseconds) in `variant` at `batch_size`, fresh networks."""
    import torch

    views, model, loss, optim = configs_for(dataclasses.replace(bench, batch_size=batch_size))
    model = dataclasses.replace(model, activation_checkpointing=variant == "checkpointed")
    context = standalone_context(model, loss, optim, device=bench.device, precision=precision, channels_last=True,
                                 compiled=compiled, seed=bench.seed)
    inputs = synthetic_inputs(views, batch_size, bench.device, channels_last=True, seed=bench.seed)

    def step() -> None:
        train_step(context, inputs, 1e-3, 0.99, batch_size)

    step()  # allocates gradients and LARS momentum, compiles: never measured
    cuda = bench.device == "cuda"
    gib = 2.0**30
    synchronize(bench.device)
    # what lives across steps: CUDA's allocator counts it; on CPU, the storages of weights, state and views
    static = (torch.cuda.memory_allocated() if cuda else live_bytes(static_tensors(context, inputs))) / gib
    reset_peak_memory(bench.device)
    start = time.perf_counter()
    if cuda:
        step()
        synchronize(bench.device)
        total = peak_memory_gib(bench.device)
    else:
        total = static + cpu_step_peak_bytes(step) / gib
    seconds = time.perf_counter() - start
    del context, inputs
    gc.collect()
    return Result(bench="memory", pipeline=variant, recipe=view_sizes(bench), batch_size=batch_size,
                  ms=seconds * 1e3, repeats=1, peak_gib=total, threads=torch.get_num_threads(),
                  extra={"device": bench.device, "encoder": f"{bench.encoder}x{bench.width}", "precision": precision,
                         "compiled": compiled, "static_gib": static, "step_gib": total - static,
                         "method": "torch.cuda.max_memory_allocated" if cuda else "profiler allocation events",
                         "profiled_step": not cuda})


def add_slopes(rows: Sequence[Result]) -> list[Result]:
    """Each row with `per_image_mib` (its variant's least-squares slope of step memory over batch size) and
    `ratio` (checkpointed slope / plain slope), when the variant has two or more batch sizes."""
    slopes = {}
    for variant in VARIANTS:
        points = [(r.batch_size, r.extra["step_gib"] * 1024) for r in rows if r.pipeline == variant]
        if len(points) >= 2:
            mean_b = sum(b for b, _ in points) / len(points)
            mean_m = sum(m for _, m in points) / len(points)
            slopes[variant] = (sum((b - mean_b) * (m - mean_m) for b, m in points)
                               / sum((b - mean_b) ** 2 for b, _ in points))
    ratio = slopes["checkpointed"] / slopes["plain"] if len(slopes) == 2 and slopes["plain"] > 0 else None
    out = []
    for row in rows:
        extra = dict(row.extra)
        if row.pipeline in slopes:
            extra["per_image_mib"] = slopes[row.pipeline]
        if ratio is not None:
            extra["ratio"] = ratio
        out.append(dataclasses.replace(row, extra=extra))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The memory benchmark's options: the network and views, batch sizes, variants, precision, compile."""
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where the step runs (default auto)")
    add("--encoder", default="resnet50", help="resnet18 ... resnet200 (default resnet50)")
    add("--width", type=int, choices=(1, 2, 4), default=1, help="encoder width multiplier (default 1)")
    add("--views", default="4L+2S", help="view recipe '<L>L+<S>S' (default 4L+2S)")
    add("--large-size", type=int, default=224, help="large view side (default 224)")
    add("--small-size", type=int, default=96, help="small view side (default 96)")
    add("--batch-sizes", type=int, nargs="+", help="images per step (default: 64 128 256 on CUDA, 2 4 on CPU)")
    add("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="default: both")
    add("--precision", choices=("fp32", "bf16"), help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    add("--compile", choices=("on", "off"), help="torch.compile the step (default: on for CUDA, off on CPU)")
    add("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add("--seed", type=int, default=0)


def run_from_args(args: argparse.Namespace, console) -> Report:
    """`relic-fast bench memory`: every (batch size, variant) the options name, with the per-image slopes."""
    import torch

    device = torch_device_for(args.device).type
    cuda = device == "cuda"
    bench = StepBench(device=device, encoder=args.encoder, width=args.width, views=args.views,
                      large_size=args.large_size, small_size=args.small_size, seed=args.seed)
    configs_for(bench)  # a bad recipe or encoder fails before any measurement
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    precision = args.precision or ("bf16" if cuda else "fp32")
    compiled = (args.compile or ("on" if cuda else "off")) == "on"
    rows = []
    for batch_size in args.batch_sizes or ((64, 128, 256) if cuda else (2, 4)):
        for variant in args.variants:
            rows.append(measure_row(bench, variant, batch_size, precision, compiled))
            console.log(f"batch {batch_size} {variant}: peak {rows[-1].peak_gib:.2f} GiB "
                        f"(step {rows[-1].extra['step_gib']:.2f} GiB), {rows[-1].ms / 1e3:.1f} s")
    title = (f"peak memory of one training step: {bench.encoder}x{bench.width}, {view_sizes(bench)}, "
             f"{bench.device}, {precision}, {'compiled' if compiled else 'eager'}")
    return Report(add_slopes(rows), title)


def print_memory_table(report: Report, console) -> None:
    """The rows as a table: batch, variant, static / step / total GiB, per-image slope, step time (the
    harness table has no static / step split)."""
    from rich.table import Table

    table = Table(title=report.title)
    for header in ("batch", "variant", "static GiB", "step GiB", "total GiB", "MiB / image", "ckpt / plain", "step s"):
        table.add_column(header, justify="left" if header == "variant" else "right")
    for row in report.rows:
        slope, ratio = row.extra.get("per_image_mib"), row.extra.get("ratio")
        table.add_row(str(row.batch_size), row.pipeline, f"{row.extra['static_gib']:.2f}",
                      f"{row.extra['step_gib']:.2f}", f"{row.peak_gib:.2f}", "" if slope is None else f"{slope:.0f}",
                      "" if ratio is None or row.pipeline == "plain" else f"{ratio:.2f}", f"{row.ms / 1e3:.1f}")
    console.print(table)


BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run_from_args, show=print_memory_table)
