"""`relic-fast profile`: run the real training loop for a few steps and find where the time goes.

Measurements, in order (single process, the config's device):
1. The trainer itself (`Trainer.run_steps`) for `warmup + steps` steps under `torch.profiler`, with the
   loop's per-step hook (`loop.StepTiming`): per step, the data wait (fetching the batch) and the
   compute (preparing the views + the step), the device synchronized around the step in this mode
   only. The `record_function` labels of the loop and step (data, prepare_views, forward, backward,
   optimizer, ema) split the compute; the active steps are written as a Chrome trace.
2. The loader alone: a fresh pipeline with the same settings, iterated for `loader_batches`.
3. The model alone: the trainer's own step (`train_step` with the trainer's context) on synthetic
   views already on the device, i.e. the consumption rate when data costs nothing.
4. DALI operator costs by ablation: DALI's Python API has no per-operator timings (executor
   statistics are memory figures; per-operator time needs Nsight Systems' NVTX ranges), so the
   loader's rate is measured again with one group of operators switched off through the config
   (jitter_p = 0, blur_p = 0, ...; the pipeline does not build an operator whose probability is 0),
   and a group's cost is the time it adds per batch.
5. On CUDA, the data tax: the synthetic step rate while a second pipeline feeds the loop one batch
   per step (its device work overlapping the step's, as in training), against the rate alone.
`relic_fast.profile_report` turns the numbers into the verdict, suggestions, tables and profile.json.
The profile's folder gets profile.json and profile_trace.json; the profiled training writes its own
run files into the `profiled_run/` subfolder, and the folder's run lock is held throughout (`runlock`).
"""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from relic_fast.config import Config, DataConfig, ViewsConfig
from relic_fast.devices import dali_device_for
from relic_fast.environment import endless, synchronize
from dali_pipelines.augmentations import ablations as augmentation_ablations, without_augmentations
from dali_pipelines.loader import build_pretrain_loader
from relic_fast.step import train_step
from relic_fast.synthetic import synthetic_inputs
from relic_fast.profile_report import build_report, write_report
from relic_fast.loop import StepTiming
from relic_fast.runlock import RunLock
from relic_fast.trainer import Trainer

PHASES = ("data", "prepare_views", "forward", "backward", "optimizer", "ema")
"""The `record_function` labels of the training loop (trainer.py) and step (step.py)."""

PROFILED_RUN = "profiled_run"
"""The subfolder of a profile's folder that the profiled training writes its run files into
(config.toml, plan.toml, metrics.jsonl): the folder may be a pretraining run's, whose own files stay."""


@dataclass(frozen=True)
class ProfileSettings:
    """How much `profile_run` measures (the `relic-fast profile` options)."""

    steps: int = 10
    """Profiled training steps (after the warm-up), traced and timed one by one."""

    warmup: int = 2
    """Training steps first, untimed: compilation, pipeline start-up, allocator warm-up."""

    loader_batches: int = 8
    """Batches per timed window of a loader measurement (the standalone rate and each ablation)."""

    loader_repeats: int = 3
    """Timed windows per loader measurement; the median window gives the rate (load spikes are common)."""

    synthetic_steps: int = 5
    """Timed steps of the synthetic-data consumption measurement (and of the data-tax one)."""

    ablation: bool = True
    """Measure DALI operator groups by ablation (one more loader measurement per group)."""

    data_tax: bool | None = None
    """Measure the step rate with a pipeline running concurrently; None: on CUDA only."""

    def __post_init__(self) -> None:
        for name in ("steps", "warmup", "loader_batches", "loader_repeats", "synthetic_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"profile {name} must be >= 1, got {getattr(self, name)}")


def profiled_config(config: Config, settings: ProfileSettings) -> Config:
    """`config` as profiled: the run cut to `warmup + steps` steps, with log windows no longer than that (what
    the profiled run's config.toml and the report record)."""
    steps = settings.warmup + settings.steps
    train = dataclasses.replace(config.train, max_steps=steps, log_every=min(config.train.log_every, steps))
    return config.replace(train=train)


def trace_training(trainer: Trainer, settings: ProfileSettings, trace_path: Path) -> dict[str, Any]:
    """Run the trainer's own loop (`Trainer.run_steps`: no checkpoint) for warm-up + profiled steps under
    torch.profiler; per-step data/compute seconds and phase times of the profiled steps."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU]
    if trainer.world.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    timings: list[tuple[float, float]] = []
    plan = schedule(wait=settings.warmup - 1, warmup=1, active=settings.steps, repeat=1)
    with profile(activities=activities, schedule=plan,
                 on_trace_ready=lambda prof: prof.export_chrome_trace(str(trace_path))) as prof:
        def on_step(data_s: float, step_s: float) -> None:
            timings.append((data_s, step_s))
            prof.step()

        trainer.run_steps(settings.warmup + settings.steps, step_timing=StepTiming(trainer.world.device, on_step))
    measured = timings[settings.warmup:]
    return {"per_step": [{"data_ms": 1e3 * d, "compute_ms": 1e3 * c} for d, c in measured],
            "phases_ms": phase_times(prof, len(measured))}


def phase_times(prof, steps: int) -> dict[str, dict[str, float]]:
    """Mean milliseconds per step of each labelled phase: host time, and device time on CUDA."""
    phases: dict[str, dict[str, float]] = {}
    for event in prof.key_averages():
        if event.key not in PHASES:
            continue
        device_us = getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0))
        phases[event.key] = {"cpu_ms": event.cpu_time_total / 1e3 / steps,
                             "device_ms": device_us / 1e3 / steps, "calls": event.count}
    return {name: phases[name] for name in PHASES if name in phases}


def build_loader(dataset, views: ViewsConfig, data: DataConfig, config: Config, device: torch.device):
    """A fresh pretraining loader with the trainer's settings (and `views`/`data` possibly ablated)."""

    return build_pretrain_loader(dataset, views, data, batch_size=config.train.batch_size,
                                 seed=config.train.seed + 1, device_id=dali_device_for(config.data.device, device))


def loader_rate(dataset, views: ViewsConfig, data: DataConfig, config: Config, device: torch.device,
                settings: ProfileSettings) -> float:
    """Images/s of a loader alone: the median of `loader_repeats` windows of `loader_batches` batches,
    after one untimed batch (pipeline start-up)."""
    loader = build_loader(dataset, views, data, config, device)
    stream = endless(loader)
    next(stream)
    windows = []
    for _ in range(settings.loader_repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(settings.loader_batches):
            next(stream)
        synchronize(device)
        windows.append(time.perf_counter() - start)
    del stream, loader
    gc.collect()  # release the pipeline's threads and (GPU) buffers before the next one is built
    return settings.loader_batches * config.train.batch_size / statistics.median(windows)


def ablations(views: ViewsConfig, data: DataConfig) -> list[tuple[str, ViewsConfig, DataConfig]]:
    """(group, views, data) with one augmentation switched off (`Augmentation.off`) for each augmentation the
    recipe uses, then everything off but decode and crops."""
    groups = [(group, ablated, data) for group, ablated in augmentation_ablations(views)]
    groups.append(("decode + crops (everything else off)", without_augmentations(views), data))
    return groups


def measure_ablation(dataset, config: Config, device: torch.device, settings: ProfileSettings,
                     full_rate: float) -> dict[str, Any]:
    """Each operator group's cost: ms per batch it adds (full recipe minus the recipe without it).

    The full recipe is measured again after the groups: the two full measurements bracket the run,
    their mean is the reference and their difference the noise; a group whose cost is within the
    noise is marked so (`within_noise`) and never named the slowest.
    """
    batch = config.train.batch_size
    measured = [(group, views, data, loader_rate(dataset, views, data, config, device, settings))
                for group, views, data in ablations(config.views, config.data)]
    again = loader_rate(dataset, config.views, config.data, config, device, settings)
    full_ms = 1e3 * batch * (1 / full_rate + 1 / again) / 2
    noise_ms = 1e3 * batch * abs(1 / full_rate - 1 / again)
    rows = []
    for group, _, _, rate in measured:
        without_ms = 1e3 * batch / rate
        bare = group.startswith("decode + crops")
        cost_ms = without_ms if bare else full_ms - without_ms
        rows.append({"group": group, "images_per_s_without": rate, "batch_ms_without": without_ms,
                     "cost_ms_per_batch": cost_ms, "share": cost_ms / full_ms, "kept_only": bare,
                     "within_noise": not bare and abs(cost_ms) <= noise_ms})
    return {"full_batch_ms": full_ms, "noise_ms": noise_ms, "groups": rows}


def synthetic_rate(trainer, steps: int, fetch: Callable[[], Any] | None = None) -> float:
    """Images/s of the trainer's step on synthetic views already on the device (no data wait).

    With `fetch`, one batch is fetched (and dropped) before every step, as the training loop does:
    the pipeline then runs at the loop's pace, prefetching ahead, and its device work competes with
    the step as it does in training (the data-tax measurement). A free-running pipeline would
    produce several times what the step consumes and overstate the tax.
    """

    device, batch = trainer.world.device, trainer.config.train.batch_size
    inputs = synthetic_inputs(trainer.config.views, batch, device,
                              channels_last=trainer.config.train.channels_last, seed=1)

    def step() -> None:
        if fetch is not None:
            fetch()
        train_step(trainer.context, inputs, 1e-3, 0.99, batch)

    step()  # warm-up (shapes already compiled by the run; the pipeline starts)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def data_tax(trainer, settings: ProfileSettings, alone_rate: float) -> dict[str, float]:
    """The step rate with a second pipeline feeding it batches at the loop's pace (dropped: the step keeps
    its synthetic views), and the share of step rate lost to the pipeline's work on the same device."""
    loader = build_loader(trainer.dataset, trainer.config.views, trainer.config.data, trainer.config,
                          trainer.world.device)
    stream = endless(loader)
    with_pipeline = synthetic_rate(trainer, settings.synthetic_steps, fetch=lambda: next(stream))
    del stream, loader
    return {"images_per_s_alone": alone_rate, "images_per_s_with_pipeline": with_pipeline,
            "tax": max(0.0, 1.0 - with_pipeline / alone_rate)}


def summarize_steps(per_step: list[dict[str, float]], batch: int) -> dict[str, float]:
    """Median data and compute ms per step, the data-wait share and the loop's images/s."""
    data = [row["data_ms"] for row in per_step]
    compute = [row["compute_ms"] for row in per_step]
    total = sum(data) + sum(compute)
    return {"data_ms_median": statistics.median(data), "compute_ms_median": statistics.median(compute),
            "data_wait_share": sum(data) / total if total > 0 else 0.0,
            "images_per_s": 1e3 * batch * len(per_step) / total if total > 0 else 0.0}


def profile_run(config: Config, out_dir: Path, settings: ProfileSettings = ProfileSettings(),
                log: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Profile `config`'s training into the folder `out_dir`: returns the report (also written as profile.json).

    `out_dir` gets profile.json and profile_trace.json, and the profiled training writes its run files
    into `out_dir/profiled_run/` (`PROFILED_RUN`), so that a pretraining run's folder can hold a profile
    and keep its own config.toml and metrics.jsonl. The folder's run lock is held throughout, as a run
    holds it: a folder in use by a live run (or another profile) is refused with `RunInUseError`."""
    with RunLock(out_dir) as lock:
        if lock.note:
            log(lock.note)
        return run_measurements(config, Path(out_dir), settings, log)


def run_measurements(config: Config, out_dir: Path, settings: ProfileSettings,
                     log: Callable[[str], None]) -> dict[str, Any]:
    """The measurements of `profile_run`, its lock held; returns the report written as `out_dir/profile.json`."""
    config = profiled_config(config, settings)
    (out_dir / PROFILED_RUN).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, out_dir / PROFILED_RUN)
    if trainer.world.distributed:
        raise RuntimeError("relic-fast profile runs a single process; start it without torchrun")
    device, batch = trainer.world.device, config.train.batch_size
    trace_path = out_dir / "profile_trace.json"
    log(f"training {settings.warmup} + {settings.steps} steps under torch.profiler")
    loop = trace_training(trainer, settings, trace_path)
    loop["summary"] = summarize_steps(loop["per_step"], batch)
    log(f"the loader alone ({settings.loader_repeats} x {settings.loader_batches} batches)")
    full_rate = loader_rate(trainer.dataset, config.views, config.data, config, device, settings)
    log(f"the step alone on synthetic views ({settings.synthetic_steps} steps)")
    consumption = synthetic_rate(trainer, settings.synthetic_steps)
    measurements = {"loop": loop, "loader_images_per_s": full_rate, "consumption_images_per_s": consumption,
                    "pipeline_device": "gpu" if trainer.plan.dali_device_id is not None else "cpu",
                    "device": str(device), "trace": str(trace_path)}
    if settings.ablation:
        log("DALI operator groups by ablation")
        measurements["ablation"] = measure_ablation(trainer.dataset, config, device, settings, full_rate)
    if settings.data_tax if settings.data_tax is not None else device.type == "cuda":
        log("the data tax: the step with a pipeline running concurrently")
        measurements["data_tax"] = data_tax(trainer, settings, consumption)
    report = build_report(config, settings, measurements)
    write_report(report, out_dir / "profile.json")
    return report
