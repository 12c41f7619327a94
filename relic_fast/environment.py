"""What this machine offers: library versions, devices and which fast paths can run.

One report used by `relic-fast info`, by every benchmark's JSON (`machine`) and by the profiler; and the
three primitives every measurement here shares, defined once so that the profiler and the benchmarks time
and size things the same way: `synchronize` (where a timed window ends), `reset_peak_memory` /
`peak_memory_gib` (device memory high-water mark) and `endless` (batches across epoch boundaries).
"""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterable, Iterator

_IMPORTED_AT = time.time()
"""Fallback process start where /proc is missing: when this module was first imported."""


def package_version(distribution: str, module: str | None = None) -> str | None:
    """Installed version of `distribution` (or of importable `module`), None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    if module is None:
        return None
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def dali_version() -> str | None:
    """Version of NVIDIA DALI, whichever CUDA build provides `nvidia.dali`."""
    try:
        import nvidia.dali as dali
    except ImportError:
        return None
    return dali.__version__


def process_age_s() -> float:
    """Seconds since this process started (interpreter start included): what a user waits for.

    Linux reads the start time from /proc/self/stat (field 22, clock ticks after boot) against
    /proc/uptime; elsewhere, the time since relic-fast's first import (misses ~0.1 s of start-up).
    """
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED_AT


def compiled_graph_count() -> int:
    """Graphs torch.compile (Dynamo) has compiled in this process so far: a rise after the first
    steps is a recompilation (new shapes, guards failing) that costs warm-up time again."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def configure_cuda_math(device) -> None:
    """On CUDA, the math settings every training step here runs with (a no-op elsewhere):
    TF32 for fp32 matmuls (the fused loss's normalized fp32 inputs among them; bf16 autocast covers
    the network), and cuDNN autotuning, which pays off because every step has the same shapes
    (static compiled graphs, `drop_last` batches): each convolution's fastest algorithm is picked
    once, on the first step, instead of by heuristics."""
    import torch

    if torch.device(device).type != "cuda":
        return
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True


def apex_available() -> bool:
    """Whether NVIDIA apex's optimizers import (optional; never required)."""
    try:
        importlib.import_module("apex.optimizers")
    except Exception:  # apex raises assorted errors when built without its CUDA extensions
        return False
    return True


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where available."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    """Short commit of the working tree this code runs from, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict:
    """Machine, versions, commit and date: recorded next to every measured number."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "gpu": gpus[0] if gpus else None,
        "gpus": len(gpus),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": package_version("torchvision", "torchvision"),
        "dali": dali_version(),
        "triton": package_version("triton", "triton"),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    }


def fast_paths() -> dict[str, tuple[bool, str]]:
    """Each optional fast path: (available here, why or why not)."""
    import torch

    cuda = torch.cuda.is_available()
    triton = package_version("triton", "triton") is not None
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    numba = package_version("numba", "numba")
    return {
        "DALI CPU pipeline": (dali_version() is not None, "nvidia.dali imports" if dali_version() else "install nvidia-dali-cuda130"),
        "DALI GPU pipeline (nvJPEG)": (dali_version() is not None and cuda, "needs DALI and a CUDA GPU"),
        "fused Triton loss": (triton and (cuda or interpret),
                              "CUDA GPU" if cuda else ("TRITON_INTERPRET=1 (slow, for tests)" if interpret else "needs CUDA (or TRITON_INTERPRET=1)")),
        "torch.compile": (hasattr(torch, "compile"), f"torch {torch.__version__}"),
        "bf16 autocast": (True, "CUDA" if cuda else "CPU (slower than fp32 on most CPUs)"),
        "apex LARS": (apex_available(), "apex importable" if apex_available() else "not installed: native LARS is used"),
        "compiled CPU pipeline kernels": (numba is not None, f"numba {numba}" if numba else
                                          "numba not installed: DALI's slower operators for the view pass and the halving"),
    }


def is_cuda(device) -> bool:
    """Whether `device` (a torch.device or a string such as "cuda", "cuda:1", "cpu") is a CUDA device."""
    return str(device).startswith("cuda")


def synchronize(device) -> None:
    """Wait until `device` has finished its queued work (CUDA); return at once on CPU.

    Timings must end where the device is done, not where the host queued the last kernel, or a window's
    device work is counted in the next one. The one definition for the profiler and every benchmark.
    """
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)  # note: a host-device sync point, on purpose: timing boundaries


def reset_peak_memory(device) -> None:
    """Start a fresh peak-memory window on a CUDA `device` (CPU peaks are measured otherwise: no-op)."""
    if is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device) -> float | None:
    """Peak memory allocated on a CUDA `device` since the last reset (or process start), in GiB; None on
    CPU, where torch keeps no such counter (the memory benchmarks read the allocator's events instead)."""
    if not is_cuda(device):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30


def endless(loader: Iterable) -> Iterator:
    """Batches from `loader` across epoch boundaries (each `iter()` of a loader is one epoch): a
    measurement takes as many batches as it needs without caring where an epoch ends."""
    while True:
        yield from loader
