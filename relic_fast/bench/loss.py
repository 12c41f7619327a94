"""Loss benchmark: the RELICv2 multi-view loss, forward + backward, per implementation and batch.

Rows (each a `relic_fast.loss.relicv2_loss` call on raw (L+S, B, D) onlines and (L, B, D) targets,
then `.backward()`):
  reference           the plain PyTorch core, eager (materializes (V, L, B, N) logits),
  reference-compiled  the same under `torch.compile`,
  fused               the Triton kernel (CUDA only), eager and `fused-compiled` under torch.compile,
  fused-bf16          the kernel's core called directly on bf16 normalized operands (tensor cores;
                      the loss itself normalizes in fp32, so `fused` runs fp32 matmuls, IEEE unless
                      `--matmul-precision high` allows TF32).
Every row warms up, repeats, and reports the median and interquartile spread (relic_fast.bench.harness),
the peak extra memory of one forward + backward beyond its inputs (CUDA: max_memory_allocated; CPU:
the peak resident set size, VmHWM reset through /proc/self/clear_refs, minus the RSS before), and
the achieved TFLOP/s against the floor. The floor, printed per batch size: the FLOPs no
implementation can skip (three B x N x D matmuls per view pair: z, z' and the gradient; the fused
kernel does five, recomputing z and z' in backward) and the bytes it must move (read the three
normalized inputs once, write the gradient once).

    relic-fast bench loss --json loss.json            (CPU: B in {256, 1024}, no fused rows)
    python -m benchmarks.bench_loss --batch-sizes 4096 --matmul-precision high
"""

from __future__ import annotations

import argparse
import ctypes
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from relic_fast.bench.benchmark import Benchmark, Report
from relic_fast.bench.harness import Result, add_ratios, measure
from relic_fast.environment import peak_memory_gib, reset_peak_memory, synchronize
from relic_fast.loss import draw_negative_offsets, relicv2_loss
from relic_fast.devices import torch_device_for

IMPLEMENTATIONS = ("reference", "reference-compiled", "fused", "fused-compiled", "fused-bf16")
CUDA_ONLY = ("fused", "fused-compiled", "fused-bf16")


@dataclass(frozen=True)
class LossProblem:
    """One loss call's size: views, local batch B (= N, single process), embedding size D."""

    large: int
    small: int
    batch: int
    dim: int
    num_negatives: int = 0
    """0: every other sample is a negative; n > 0: n shared negative offsets."""

    @property
    def online_views(self) -> int:
        """V = L + S."""
        return self.large + self.small

    @property
    def candidates(self) -> int:
        """Columns each row's softmaxes run over: N, or n + 1 with sampled negatives."""
        return self.num_negatives + 1 if self.num_negatives else self.batch

    @property
    def recipe(self) -> str:
        """"4L+2S" style name."""
        return f"{self.large}L+{self.small}S" if self.small else f"{self.large}L"


def floor(problem: LossProblem, element_bytes: int = 4) -> dict[str, float]:
    """FLOPs and bytes the loss must compute and move, and what the fused kernel computes."""
    V, L, B, D = problem.online_views, problem.large, problem.batch, problem.dim
    N, C = problem.batch, problem.candidates
    matmul = 2.0 * V * L * B * C * D  # one (B x C x D) product per view pair
    inputs = (V * B + L * N + V * N) * D * element_bytes
    return {"floor_gflop": 3 * matmul / 1e9, "fused_gflop": 5 * matmul / 1e9,
            "floor_mb": (inputs + V * B * D * element_bytes) / 1e6,
            "reference_logits_mb": V * L * B * C * 4 / 1e6}


def make_step(implementation: str, problem: LossProblem, device: str, seed: int = 0) -> Callable[[], None]:
    """A zero-argument forward + backward of `implementation` on fresh random embeddings."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    V, L, B, D = problem.online_views, problem.large, problem.batch, problem.dim
    online = torch.randn(V, B, D, generator=gen).to(device).requires_grad_()
    target = torch.randn(L, B, D, generator=gen).to(device)
    offsets = draw_negative_offsets(B, problem.num_negatives, device) if problem.num_negatives else None

    def loss_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        impl = "reference" if implementation.startswith("reference") else "fused"
        return relicv2_loss(x, t, implementation=impl, negative_offsets=offsets)

    if implementation == "fused-bf16":
        from relic_fast.kernels.relicv2_fused import relicv2_core_fused

        def loss_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # noqa: F811
            x_n, t_n = F.normalize(x, dim=-1).bfloat16(), F.normalize(t, dim=-1).bfloat16()
            return relicv2_core_fused(x_n, t_n, x_n.detach(), temperature=0.2, beta=1.0, row_offset=0,
                                      negative_offsets=offsets)[0]

    fn = torch.compile(loss_fn) if implementation.endswith("compiled") else loss_fn

    def step() -> None:
        online.grad = None
        fn(online, target).backward()

    return step


def _rss_kib() -> tuple[int, int]:
    """(peak, current) resident set size of this process in KiB, from /proc/self/status."""
    text = open("/proc/self/status").read()
    return (int(re.search(r"VmHWM:\s+(\d+)", text).group(1)), int(re.search(r"VmRSS:\s+(\d+)", text).group(1)))


def _return_freed_memory() -> None:
    """Make glibc give large freed blocks straight back to the OS, so that RSS follows live tensors.

    glibc raises its mmap threshold each time a large block is freed, after which freed tensors stay
    in the heap and a later peak does not show in RSS; a fixed 64 KiB threshold (mallopt
    M_MMAP_THRESHOLD) maps and unmaps every tensor over 64 KiB.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: RSS deltas may then undercount reused memory


def peak_extra_gib(step: Callable[[], None], device: str) -> tuple[float | None, str]:
    """Peak memory one call of `step` needs beyond what is allocated before it, and how it was measured."""
    if device.startswith("cuda"):
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        reset_peak_memory(device)
        step()
        synchronize(device)
        return peak_memory_gib(device) - before / 2**30, "cuda max_memory_allocated"
    try:
        _return_freed_memory()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return None, "unavailable"
    before = _rss_kib()[1]
    step()
    return (_rss_kib()[0] - before) / 2**20, "cpu peak RSS delta"


def run(problems: Sequence[LossProblem], implementations: Sequence[str], device: str, *, warmup: int,
        repeats: int, console) -> list[Result]:
    """Time every implementation on every problem, then measure peak memory (a separate pass: on CPU
    it changes the allocator policy); CUDA-only rows are skipped, with a note, on CPU."""
    if not device.startswith("cuda"):
        for implementation in set(implementations) & set(CUDA_ONLY):
            console.print(f"[yellow]{implementation}[/]: needs CUDA (the Triton kernel runs on CPU only "
                          "under the interpreter, far too slow to time): skipped")
        implementations = [i for i in implementations if i not in CUDA_ONLY]
    timed = []
    for problem in problems:
        for implementation in implementations:
            step = make_step(implementation, problem, device)
            row = measure(bench="loss", pipeline=implementation, fn=step, items=problem.batch,
                          warmup=warmup, repeats=repeats, device=device,
                          recipe=f"{problem.recipe} B={problem.batch}", batch_size=problem.batch)
            console.print(f"  {implementation:>18} B={problem.batch}: {row.ms:.2f} ms")
            timed.append((problem, implementation, step, row))
    rows = []
    for problem, implementation, step, row in timed:
        sizes = floor(problem)
        peak, how = peak_extra_gib(step, device)
        flops = sizes["fused_gflop" if implementation.startswith("fused") else "floor_gflop"]
        extra = {"device": device, "dim": problem.dim, "num_negatives": problem.num_negatives,
                 "memory": how, **sizes, "tflops_floor": sizes["floor_gflop"] / row.ms,
                 "tflops_executed": flops / row.ms}
        rows.append(Result(**{**row.__dict__, "peak_gib": peak, "extra": extra}))
        console.print(f"  {implementation:>18} B={problem.batch}: {extra['tflops_floor']:.3f} floor TFLOP/s, "
                      f"peak extra {'n/a' if peak is None else f'{peak:.3f} GiB'} ({how})")
    return add_ratios(rows, baseline="reference", match=("recipe",))


def print_floor(problems: Sequence[LossProblem], console) -> None:
    """The floor per batch size: FLOPs, bytes moved, and the MB of one (V, L, B, N) fp32 logit tensor
    (the reference materializes several)."""
    from rich.table import Table

    table = Table(title="floor per forward + backward (fp32 operands)")
    for header in ("B", "views", "D", "cand.", "floor GFLOP", "fused GFLOP", "floor MB",
                   "logits MB"):
        table.add_column(header, justify="right")
    for p in problems:
        s = floor(p)
        table.add_row(str(p.batch), p.recipe, str(p.dim), str(p.candidates), f"{s['floor_gflop']:.1f}",
                      f"{s['fused_gflop']:.1f}", f"{s['floor_mb']:.1f}", f"{s['reference_logits_mb']:.1f}")
    console.print(table)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The loss benchmark's options: problem size, implementations, device and matmul precision."""
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="B values (default: 256 1024 4096 on CUDA, 256 1024 on CPU)")
    parser.add_argument("--dim", type=int, default=256, help="embedding size D")
    parser.add_argument("--large", type=int, default=4, help="L large views (online and target)")
    parser.add_argument("--small", type=int, default=2, help="S small views (online only)")
    parser.add_argument("--num-negatives", type=int, default=0, help="0: all negatives; n: n shared offsets")
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                        help="auto (the GPU when CUDA is available), cpu or gpu")
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high", "medium"),
                        help="torch.set_float32_matmul_precision: 'high' lets fp32 matmuls use TF32")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls (compilation, autotuning)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls")


def run_from_args(args: argparse.Namespace, console) -> Report:
    """`relic-fast bench loss`: the floor table first, then every implementation on every batch size."""
    device = str(torch_device_for(args.device))
    torch.set_float32_matmul_precision(args.matmul_precision)
    batches = args.batch_sizes or ([256, 1024, 4096] if device.startswith("cuda") else [256, 1024])
    problems = [LossProblem(args.large, args.small, b, args.dim, args.num_negatives) for b in batches]
    print_floor(problems, console)
    rows = run(problems, args.implementations, device, warmup=args.warmup, repeats=args.repeats,
               console=console)
    return Report(rows, f"RELICv2 loss forward + backward, {device}, D={args.dim}, "
                        f"matmul precision {args.matmul_precision}")


BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run_from_args)
