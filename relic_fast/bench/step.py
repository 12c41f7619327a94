"""Training-step throughput: eager vs compiled, channels-last vs contiguous, fp32 vs bf16 autocast.

Each variant runs the trainer's own step (`relic_fast.step.train_step`: forward over every view,
target over the large views, RELICv2 loss, backward, LARS, EMA) on synthetic views already on the
device, so no input pipeline is involved: the figure is what the model can consume. Rows report
images/s (images of B per step, each with L + S views), the ratio to the eager fp32 contiguous
baseline, the first step's seconds (the compile warm-up of compiled variants) and, on CUDA, peak
memory. Defaults: on CUDA the GPU target (ResNet50, 4x224 + 2x96, B = 128); on CPU a small
configuration (ResNet18, 2x64 + 2x32, B = 16) that finishes in a few minutes on two cores.

    relic-fast bench step --json step.json --png step.png
    python -m benchmarks.bench_step --encoder resnet50 --views 4L+2S --batch-size 64   (the same options)
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass, replace

from relic_fast.bench.benchmark import Benchmark, Report
from relic_fast.bench.harness import Result, add_ratios, measure
from relic_fast.bench.loader import parse_recipe
from relic_fast.environment import peak_memory_gib, reset_peak_memory, synchronize
from relic_fast.config import LossConfig, ModelConfig, OptimConfig, ViewsConfig
from relic_fast.step import train_step
from relic_fast.synthetic import standalone_context, synthetic_inputs
from relic_fast.devices import torch_device_for

BASELINE = "eager-fp32-contiguous"
ALL_VARIANTS = tuple(f"{mode}-{precision}-{layout}" for mode in ("eager", "compiled")
                     for precision in ("fp32", "bf16") for layout in ("contiguous", "channels-last"))
DEFAULT_VARIANTS = {
    "cuda": (BASELINE, "eager-fp32-channels-last", "eager-bf16-contiguous", "eager-bf16-channels-last",
             "compiled-bf16-channels-last"),
    "cpu": (BASELINE, "eager-fp32-channels-last", "eager-bf16-channels-last", "compiled-fp32-channels-last"),
}
"""Per device: the baseline, each speed-up alone, and the configuration that device trains with (on
CUDA the trainer's compiled bf16 channels-last; on CPU compiled fp32, as bf16 autocast is several
times slower on CPUs without bf16 units). The first compiled run on CPU pays inductor's C++ compile
(minutes on 2 cores; cached for later runs). `--variants all` runs all eight combinations."""


@dataclass(frozen=True)
class StepBench:
    """What one `bench_step` run measures (the command-line options, typed)."""

    device: str = "cpu"
    encoder: str = "resnet18"
    width: int = 1
    views: str = "2L+2S"
    large_size: int = 64
    small_size: int = 32
    batch_size: int = 16
    variants: tuple[str, ...] = DEFAULT_VARIANTS["cpu"]
    warmup: int = 1
    """Untimed steps before the repeats; the first one (timed apart as `first_step_s`) compiles."""
    repeats: int = 3
    projector_hidden: int = 4096
    predictor_hidden: int = 4096
    loss_implementation: str = "auto"
    threads: int | None = None
    """torch intra-op threads (torch.set_num_threads); None keeps torch's default."""
    seed: int = 0


def defaults_for(device: str) -> StepBench:
    """The default benchmark on `device`: the GPU target on CUDA, a small configuration on CPU."""
    if device == "cuda":
        return StepBench(device="cuda", encoder="resnet50", views="4L+2S", large_size=224, small_size=96,
                         batch_size=128, warmup=3, repeats=10, variants=DEFAULT_VARIANTS["cuda"])
    return StepBench(device="cpu")


def parse_variant(name: str) -> tuple[bool, str, bool]:
    """"compiled-bf16-channels-last" -> (compiled, precision, channels_last)."""
    if name not in ALL_VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(ALL_VARIANTS)} (or 'all')")
    mode, precision, layout = name.split("-", 2)
    return mode == "compiled", precision, layout == "channels-last"


def configs_for(bench: StepBench):
    """The (views, model, loss, optim) config sections the benchmark's step is built from."""

    num_large, num_small = parse_recipe(bench.views)
    views = ViewsConfig(num_large=num_large, num_small=num_small, large_size=bench.large_size,
                        small_size=bench.small_size)
    model = ModelConfig(encoder=bench.encoder, width=bench.width, projector_hidden=bench.projector_hidden,
                        predictor_hidden=bench.predictor_hidden, sync_batchnorm=False)
    return views, model, LossConfig(implementation=bench.loss_implementation), OptimConfig()


def view_sizes(bench: StepBench) -> str:
    """"4x224+2x96": the views each image contributes."""

    num_large, num_small = parse_recipe(bench.views)
    return f"{num_large}x{bench.large_size}" + (f"+{num_small}x{bench.small_size}" if num_small else "")


def measure_variant(bench: StepBench, variant: str) -> Result:
    """Images/s of the training step in one variant (fresh networks, same seed, synthetic views)."""
    import torch

    compiled, precision, channels_last = parse_variant(variant)
    views, model, loss, optim = configs_for(bench)
    reset_peak_memory(bench.device)
    context = standalone_context(model, loss, optim, device=bench.device, precision=precision,
                                 channels_last=channels_last, compiled=compiled, seed=bench.seed)
    inputs = synthetic_inputs(views, bench.batch_size, bench.device, channels_last=channels_last, seed=bench.seed)

    def step() -> None:
        train_step(context, inputs, 1e-3, 0.99, bench.batch_size)

    start = time.perf_counter()
    step()  # the first step compiles (compiled variants) and allocates: timed apart, never in the median
    synchronize(bench.device)
    first_step_s = time.perf_counter() - start
    row = measure(bench="step", pipeline=variant, fn=step, items=bench.batch_size, warmup=max(bench.warmup - 1, 0),
                  repeats=bench.repeats, device=bench.device, recipe=view_sizes(bench), batch_size=bench.batch_size,
                  threads=torch.get_num_threads(),
                  extra={"device": bench.device, "encoder": f"{bench.encoder}x{bench.width}", "compiled": compiled,
                         "precision": precision, "channels_last": channels_last,
                         "first_step_s": round(first_step_s, 3), "loss_implementation": loss.implementation})
    row = replace(row, peak_gib=peak_memory_gib(bench.device))
    del context, inputs
    gc.collect()  # free this variant's networks before the next one allocates
    return row


def run(bench: StepBench, *, console=None) -> list[Result]:
    """Measure every variant of `bench`; rows carry their ratio to the eager fp32 contiguous baseline."""
    import torch

    if bench.threads is not None:
        torch.set_num_threads(bench.threads)
    rows = []
    for variant in bench.variants:
        rows.append(measure_variant(bench, variant))
        if console is not None:
            console.log(f"measured {variant}: {rows[-1].images_per_s:,.1f} images/s "
                        f"(first step {rows[-1].extra['first_step_s']:.1f} s)")
    return add_ratios(rows, baseline=BASELINE, match=("recipe", "threads"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The step benchmark's options; left unset, each takes the device's default (`defaults_for`)."""
    add = parser.add_argument
    add("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where the step runs (default auto)")
    add("--encoder", help="resnet18 ... resnet200 (default: resnet50 on CUDA, resnet18 on CPU)")
    add("--width", type=int, choices=(1, 2, 4), help="encoder width multiplier (default 1)")
    add("--views", help="view recipe '<L>L+<S>S' (default: 4L+2S on CUDA, 2L+2S on CPU)")
    add("--large-size", type=int, help="large view side (default: 224 on CUDA, 64 on CPU)")
    add("--small-size", type=int, help="small view side (default: 96 on CUDA, 32 on CPU)")
    add("--batch-size", type=int, help="images per step (default: 128 on CUDA, 16 on CPU)")
    add("--variants", nargs="+", help=f"variants to run, or 'all' (default on CUDA: {' '.join(DEFAULT_VARIANTS['cuda'])}; "
                                     f"on CPU: {' '.join(DEFAULT_VARIANTS['cpu'])})")
    add("--warmup", type=int, help="untimed steps first, the compiling one included (default: 3 CUDA, 1 CPU)")
    add("--repeats", type=int, help="timed steps per variant (default: 10 CUDA, 3 CPU)")
    add("--projector-hidden", type=int, help="projector MLP hidden width (default 4096)")
    add("--predictor-hidden", type=int, help="predictor MLP hidden width (default 4096)")
    add("--loss", dest="loss_implementation", choices=("auto", "reference", "fused"),
        help="loss implementation (default auto: fused on CUDA, reference on CPU)")
    add("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add("--seed", type=int)


def bench_from_args(args: argparse.Namespace) -> StepBench:
    """The device's defaults with every option the user gave on top."""
    bench = defaults_for(torch_device_for(args.device).type)
    changes = {key: getattr(args, key) for key in ("encoder", "width", "views", "large_size", "small_size",
                                                   "batch_size", "warmup", "repeats", "projector_hidden",
                                                   "predictor_hidden", "loss_implementation", "threads", "seed")
               if getattr(args, key) is not None}
    if args.variants:
        variants = ALL_VARIANTS if args.variants == ["all"] else tuple(args.variants)
        for name in variants:
            parse_variant(name)  # fail before any measurement on a typo
        changes["variants"] = variants
    bench = replace(bench, **changes)
    if bench.repeats < 1 or bench.warmup < 1:
        raise ValueError("--repeats and --warmup must be >= 1 (the first step compiles and is never timed)")
    configs_for(bench)  # validates the recipe, sizes and encoder before any measurement
    return bench


def run_from_args(args: argparse.Namespace, console) -> Report:
    """`relic-fast bench step`: every variant of the benchmark the options describe."""
    bench = bench_from_args(args)  # a bad recipe, variant or encoder fails here, before any measurement
    title = (f"training step: {bench.encoder}x{bench.width}, {view_sizes(bench)}, batch {bench.batch_size}, "
             f"{bench.device} (synthetic views on the device)")
    return Report(run(bench, console=console), title)


BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run_from_args,
                      chart_title="training step images/s")
