"""`relic-fast selftest`: prove, on whatever device is present, that the fast paths agree with their references.

Three checks, each a pass, a fail (with the measured error and its tolerance) or a skip (with why):
- pipeline-statistics (GPU only): the GPU pipeline's views have the statistics of the CPU
  pipeline's on the same recipe and images: per-channel pixel mean and standard deviation of the
  large and small views and the fraction of grayscale views, as z-scores of the difference.
- fused-loss: the fused Triton loss matches `relicv2_core_reference`, forward terms and gradient.
  On CUDA directly at training sizes (fp32 and bf16); on CPU in a subprocess under the Triton
  interpreter (TRITON_INTERPRET=1 must be set before triton is imported) at tiny sizes.
- compiled-step: a compiled, channels-last, bf16-autocast training step (fused loss on CUDA)
  gives the loss and the parameter update of an eager fp32 contiguous step with the reference
  loss, from identical weights and views. On CUDA the backend is inductor (the Triton kernels the
  trainer runs); on CPU it defaults to aot_eager: the graph capture and AOT autograd that the GPU
  path shares, without inductor's CPU code generation, which the GPU never runs and which takes
  minutes on a two-core machine (`compile_backend="inductor"` runs it anyway).
`perturb` is a test hook: it scales every fast-path result by (1 + perturb) before the comparison,
so a test can prove that a wrong implementation fails the check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from relic_fast.loss import relicv2_core_reference
from relic_fast.step import train_step
from relic_fast.config import LossConfig, ModelConfig, OptimConfig, ViewsConfig
from relic_fast.synthetic import standalone_context, synthetic_inputs
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.dataset import resolve_dataset
from relic_fast.config import DataConfig, ViewsConfig
from relic_fast.demo_data import generate_demo_dataset
from relic_fast.devices import torch_device_for

CHECKS = ("pipeline-statistics", "compiled-step", "fused-loss")
"""In the order they run (on CPU the interpreted fused-loss child starts first and runs alongside)."""
LOSS_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}
"""Relative error allowed between the fused and the reference loss (terms and gradient), per input dtype."""
STEP_TOLERANCE = {"loss": 3e-2, "update": 0.1}
"""Relative error allowed between the bf16 compiled step and the fp32 eager one: loss terms, parameter update.
The update's tolerance grows to `BF16_FLOOR_FACTOR` x the error of an eager bf16 step (the noise floor of
bf16 itself: BatchNorm bias gradients sum many nearly cancelling terms) when that is larger."""
BF16_FLOOR_FACTOR = 1.5
MAX_Z = 5.0
"""Largest |z| of a CPU-vs-GPU pipeline statistic difference that still passes."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: status "pass" / "fail" / "skip", what was measured, and how long it took."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    tolerances: dict[str, float] = field(default_factory=dict)


def relative_error(fast: torch.Tensor, reference: torch.Tensor) -> float:
    """||fast - reference|| / ||reference|| in float64 (the norm floor avoids dividing by zero)."""
    fast, reference = fast.detach().double().cpu(), reference.detach().double().cpu()
    return float((fast - reference).norm() / reference.norm().clamp_min(1e-12))


def judge(name: str, errors: dict[str, float], tolerances: dict[str, float], seconds: float, what: str) -> CheckResult:
    """Pass when every error is within its tolerance (`tolerances[key]`, or the one named by the key's prefix)."""
    def limit(key: str) -> float:
        return tolerances.get(key, tolerances.get(key.split(":")[0], 0.0))

    failed = {k: v for k, v in errors.items() if not v <= limit(k)}  # NaN fails
    worst = max(errors, key=lambda k: errors[k] / max(limit(k), 1e-30))
    if failed:
        detail = "; ".join(f"{k} = {v:.3g} > {limit(k):.3g}" for k, v in failed.items())
        return CheckResult(name, "fail", f"{what}: {detail}", seconds, errors, tolerances)
    return CheckResult(name, "pass", f"{what}; worst {worst} = {errors[worst]:.3g} (tolerance {limit(worst):.3g})",
                       seconds, errors, tolerances)


# ---------------------------------------------------------------- fused loss
def loss_case(V: int, L: int, B: int, D: int, negatives: int, dtype: torch.dtype, device: str,
              perturb: float, seed: int = 0) -> dict[str, float]:
    """Relative errors (loss terms, gradient) of the fused core against the reference on one problem."""
    from relic_fast.kernels.relicv2_fused import relicv2_core_fused

    gen = torch.Generator().manual_seed(seed)
    online = F.normalize(torch.randn(V, B, D, generator=gen), dim=-1).to(device, dtype)
    target = F.normalize(torch.randn(L, B, D, generator=gen), dim=-1).to(device, dtype)
    offsets = (torch.randperm(B - 1, generator=gen)[:negatives] + 1).to(device) if negatives else None
    weights = torch.tensor([1.0, 0.3, -0.7], device=device)  # every term reaches the gradient

    def run(core, o: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = o.clone().requires_grad_()
        loss = core(o, t, o.detach(), temperature=0.2, beta=1.0, row_offset=0, negative_offsets=offsets)
        (grad,) = torch.autograd.grad((loss.float() * weights).sum(), o)
        return loss.detach(), grad

    # the reference sees the same (rounded) values in float32: the error is the kernel's alone
    ref_loss, ref_grad = run(relicv2_core_reference, online.float(), target.float())
    loss, grad = run(relicv2_core_fused, online, target)
    scale = 1.0 + perturb
    return {"loss": relative_error(loss * scale, ref_loss), "grad": relative_error(grad.float() * scale, ref_grad)}


def fused_loss_errors(device: str, perturb: float) -> dict[str, float]:
    """Errors over the problems of `device`: training sizes on CUDA (fp32, bf16), tiny ones when interpreted."""
    if device == "cuda":
        cases = [(6, 4, 1024, 256, 0, torch.float32), (6, 4, 1024, 256, 255, torch.float32),
                 (6, 4, 1024, 256, 0, torch.bfloat16)]
    else:  # the interpreter runs every program in Python: sizes that straddle its 16 x 16 tiles
        cases = [(3, 2, 18, 16, 0, torch.float32), (3, 2, 20, 24, 5, torch.float32)]
    errors = {}
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # IEEE fp32 in both (no TF32) for the fp32 comparison
    try:
        for V, L, B, D, n, dtype in cases:
            dtype_name = str(dtype).removeprefix("torch.")
            for key, value in loss_case(V, L, B, D, n, dtype, device, perturb).items():
                errors[f"{dtype_name}:{key} V{V} L{L} B{B} D{D} n{n or 'all'}"] = value
    finally:
        torch.set_float32_matmul_precision(previous)
    return errors


def start_interpreted_loss(perturb: float) -> subprocess.Popen:
    """Start `fused_loss_errors("cpu")` in a subprocess with TRITON_INTERPRET=1 (it runs while other checks do)."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen([sys.executable, "-m", "relic_fast.selftest", "fused-loss-child", repr(perturb)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interpreted_loss_errors(child: subprocess.Popen) -> dict[str, float]:
    """The JSON errors the interpreted child prints (its stderr in the error when it failed)."""
    stdout, stderr = child.communicate(timeout=600)
    if child.returncode != 0:
        raise RuntimeError(f"the interpreted fused-loss check failed to run:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def triton_installed() -> bool:
    """Whether triton can be imported (the fused loss's only extra dependency)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def check_fused_loss(device: str, perturb: float, child: subprocess.Popen | None = None) -> CheckResult:
    """Fused Triton loss vs the reference, forward and backward (on CPU through the interpreted `child`)."""
    start = time.perf_counter()
    if not triton_installed():
        return CheckResult("fused-loss", "skip", "triton is not installed")
    if device == "cuda":
        errors, what = fused_loss_errors("cuda", perturb), "compiled kernels, training sizes"
    else:
        errors = interpreted_loss_errors(child or start_interpreted_loss(perturb))
        what = "Triton interpreter (TRITON_INTERPRET=1), tiny sizes"
    tolerances = {"float32": LOSS_TOLERANCE["float32"], "bfloat16": LOSS_TOLERANCE["bfloat16"]}
    return judge("fused-loss", errors, tolerances, time.perf_counter() - start, what)


# ---------------------------------------------------------------- compiled step
def step_update(context, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step: its loss terms and the online parameters' update (after - before), flattened."""

    before = [p.detach().clone() for p in context.online_module.parameters()]
    terms = train_step(context, inputs, 0.1, 0.99, inputs.large.shape[0] // inputs.num_large)
    update = torch.cat([(p.detach() - b).flatten().float() for p, b in zip(context.online_module.parameters(), before)])
    return terms.float(), update


def check_compiled_step(device: str, perturb: float, compile_backend: str | None = None) -> CheckResult:
    """Compiled channels-last bf16 step (fused loss on CUDA) vs eager fp32 contiguous step (reference loss)."""

    start = time.perf_counter()
    backend = compile_backend or ("inductor" if device == "cuda" else "aot_eager")
    size = 64 if device == "cuda" else 32
    views = ViewsConfig(num_large=2, num_small=2, large_size=size, small_size=size // 2)
    model = ModelConfig(encoder="resnet18", projector_hidden=64, predictor_hidden=64, embedding_dim=32,
                        sync_batchnorm=False)
    batch = 16 if device == "cuda" else 8
    common = dict(device=device, lr=0.1, seed=0)
    eager = standalone_context(model, LossConfig(implementation="reference"), OptimConfig(), precision="fp32",
                               channels_last=False, compiled=False, **common)
    fast = standalone_context(model, LossConfig(implementation="auto"), OptimConfig(), precision="bf16",
                              channels_last=True, compiled=True, compile_backend=backend, **common)
    eager_bf16 = standalone_context(model, LossConfig(implementation="reference"), OptimConfig(), precision="bf16",
                                    channels_last=True, compiled=False, **common)
    eager_terms, eager_update = step_update(eager, synthetic_inputs(views, batch, device, channels_last=False))
    fast_terms, fast_update = step_update(fast, synthetic_inputs(views, batch, device, channels_last=True))
    _, floor_update = step_update(eager_bf16, synthetic_inputs(views, batch, device, channels_last=True))
    floor = relative_error(floor_update, eager_update)
    scale = 1.0 + perturb
    errors = {"loss": relative_error(fast_terms * scale, eager_terms),
              "update": relative_error(fast_update * scale, eager_update)}
    tolerances = {**STEP_TOLERANCE, "update": max(STEP_TOLERANCE["update"], BF16_FLOOR_FACTOR * floor)}
    what = (f"resnet18, 2x{size}+2x{size // 2} px, batch {batch}, torch.compile backend {backend}; "
            f"eager bf16 vs fp32 update error {floor:.3g}")
    return judge("compiled-step", errors, tolerances, time.perf_counter() - start, what)


# ---------------------------------------------------------------- pipeline statistics
def view_statistics(loader, batches: int) -> dict[str, torch.Tensor]:
    """Per image (rows), averaged over its large (or small) views: each channel's pixel mean and std, and
    the fraction of its views that are gray. Views of one image are correlated, images are not: the
    z-scores of `statistic_z_scores` therefore take images as the independent samples."""
    stats: dict[str, list[torch.Tensor]] = {}
    stream = iter(loader)
    for _ in range(batches):
        batch = next(stream, None)
        if batch is None:
            stream = iter(loader)
            batch = next(stream)
        images = batch.labels.shape[0]
        for kind, x in (("large", batch.large), ("small", batch.small)):
            if x is None:
                continue
            x = x.float().cpu().flatten(2)                                    # (V*B, 3, pixels), 0..255
            gray = ((x[:, 0] - x[:, 1]).abs().amax(1) + (x[:, 1] - x[:, 2]).abs().amax(1)) < 0.5
            per_view = {"mean": x.mean(2), "std": x.std(2), "gray": gray.float()[:, None]}
            for name, values in per_view.items():                            # view-major -> per image
                stats.setdefault(f"{kind} {name}", []).append(values.unflatten(0, (-1, images)).mean(0))
    return {key: torch.cat(parts) for key, parts in stats.items()}


def statistic_z_scores(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], perturb: float = 0.0) -> dict[str, float]:
    """|z| of the difference of the two pipelines' average per statistic and channel (independent samples)."""
    channels = ("R", "G", "B")
    z = {}
    for key in a:
        x, y = a[key].double(), b[key].double() * (1.0 + perturb)
        se = (x.var(0) / len(x) + y.var(0) / len(y)).sqrt().clamp_min(1e-3)
        for c, value in enumerate(((x.mean(0) - y.mean(0)).abs() / se).tolist()):
            z[key if x.shape[1] == 1 else f"{key} {channels[c]}"] = value
    return z


def compare_pipelines(dataset, views, data, *, device_ids: tuple[int | None, int | None], batches: int,
                      batch_size: int, seeds: tuple[int, int] = (0, 0), perturb: float = 0.0) -> dict[str, float]:
    """z-scores of the view statistics of pipeline A (`device_ids[0]`) against pipeline B (uint8 outputs)."""
    samples = []
    for device_id, seed in zip(device_ids, seeds):
        loader = build_pretrain_loader(dataset, views, data, batch_size=batch_size, seed=seed, device_id=device_id)
        samples.append(view_statistics(loader, batches))
        del loader
    return statistic_z_scores(samples[0], samples[1], perturb)


def check_pipeline_statistics(device: str, perturb: float) -> CheckResult:
    """GPU pipeline vs CPU pipeline on the default recipe: same view statistics within MAX_Z."""
    import tempfile
    from pathlib import Path

    if device != "cuda":
        return CheckResult("pipeline-statistics", "skip", "needs a CUDA GPU (compares the GPU pipeline with the CPU one)")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        generate_demo_dataset(Path(tmp) / "demo", images=200, size=128, seed=0, progress=False)
        dataset = resolve_dataset(str(Path(tmp) / "demo"))
        data = DataConfig(num_threads=min(8, os.cpu_count() or 1))
        z = compare_pipelines(dataset, ViewsConfig(), data, device_ids=(None, 0), batches=8, batch_size=32,
                              perturb=perturb)
    what = "default recipe (4x224 + 2x96), 256 images per pipeline, |z| of CPU - GPU"
    return judge("pipeline-statistics", z, {key: MAX_Z for key in z}, time.perf_counter() - start, what)


# ---------------------------------------------------------------- driver
def run_selftest(device: str = "auto", *, only: tuple[str, ...] | None = None, perturb: float = 0.0,
                 compile_backend: str | None = None, log: Callable[[str], Any] = lambda text: None) -> list[CheckResult]:
    """Run the checks (all, or `only`) on `device` ("auto", "cpu" or "gpu"); an exception inside a check is
    its failure."""
    device = torch_device_for(device).type  # "cuda" or "cpu"
    names = tuple(only or CHECKS)
    for name in names:
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; choose from {', '.join(CHECKS)}")
    child = None
    if device == "cpu" and "fused-loss" in names and triton_installed():
        child = start_interpreted_loss(perturb)  # the interpreter runs alongside the other checks
    runners = {"pipeline-statistics": lambda: check_pipeline_statistics(device, perturb),
               "fused-loss": lambda: check_fused_loss(device, perturb, child),
               "compiled-step": lambda: check_compiled_step(device, perturb, compile_backend)}
    results = []
    for name in names:
        log(f"selftest: {name} on {device}")
        start = time.perf_counter()
        try:
            results.append(runners[name]())
        except Exception as err:  # noqa: BLE001 - a crashing fast path is a failed check, reported as such
            results.append(CheckResult(name, "fail", f"{type(err).__name__}: {err}", time.perf_counter() - start))
    return results


def print_results(results: list[CheckResult], console=None) -> None:
    """The pass/fail/skip table."""
    from rich.console import Console
    from rich.table import Table

    colours = {"pass": "green", "fail": "bold red", "skip": "yellow"}
    table = Table(title="relic-fast selftest")
    for column in ("check", "result", "seconds", "detail"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for r in results:
        table.add_row(r.name, f"[{colours[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", r.detail)
    (console or Console()).print(table)


def exit_code(results: list[CheckResult]) -> int:
    """1 when any check failed, else 0 (skips do not fail)."""
    return int(any(r.status == "fail" for r in results))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "fused-loss-child":
    # The interpreted half of check_fused_loss: TRITON_INTERPRET=1 was set before triton's import.
    print(json.dumps(fused_loss_errors("cpu", float(sys.argv[2]))))
