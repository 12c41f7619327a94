"""The pretraining job: build everything from a `Config`, run steps, log, checkpoint, resume exactly.

Read top-down: `Trainer.__init__` resolves the run plan (`run_plan`: every "auto" decided once), then
builds the world, data and the step (`step.build_step_context`); `train` runs `for epoch: for batch`,
each step through `train_step`, with a `LoggingWindow` between log lines and an optional `StepTiming`
(profile mode) and `Validator` (e.g. the kNN monitor, handed in), all three from `loop`; `_log`,
`save`, `restore` are the bookkeeping. Only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Collection, Iterator

import torch
from rich.markup import escape
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from dali_pipelines.dataset import DatasetSpec, find_monitor_split, resolve_dataset, resolve_split
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.validate import filter_bad_files
from relic_fast.checkpoint import (check_resumable, latest_checkpoint, list_checkpoints, remove_interrupted_writes,
                                   save_checkpoint)
from relic_fast.compiling import compile_cache_folder, use_compile_cache
from relic_fast.config import Config, ConfigError, to_toml
from relic_fast.data_plan import check_saliency_masks, describe_masks, describe_monitor
from relic_fast.demo_data import ensure_demo_dataset
from relic_fast.distributed import (World, all_reduce_mean, close_world, control_group, init_world, launch_rank,
                                    same_on_every_rank)
from relic_fast.environment import compiled_graph_count, process_age_s
from relic_fast.errors import MonitorError, NothingToDo, ResumeMismatchError, RunStopped
from relic_fast.loop import LoggingWindow, MonitorInterrupted, StepTiming, Validator
from relic_fast.monitor import RunMonitor
from relic_fast.online_probe import OnlineProbe, labelled_classes
from relic_fast.plot import plot_run
from relic_fast.resume_rule import Change, RunIdentity, check_accept_keys, dataset_fingerprint
from relic_fast.run_control import RunControl
from relic_fast.run_plan import RunPlan, planned_config, resolve_plan
from relic_fast.runlock import RunLock
from relic_fast.schedules import ema_tau, learning_rate, scaled_lr
from relic_fast.stop_signals import StopSignals, torchrun_signal_warning
from relic_fast.step import (NonFiniteGuard, NonFiniteLossError, StepContext, build_step_context, prepare_views,
                             train_step)


def training_dataset(config: Config, world: World) -> tuple[DatasetSpec, DatasetSpec | None]:
    """The pretraining dataset (the built-in demo data when `data.path` is empty) and the monitor's labelled
    val split, if one is found."""
    path = config.data.path
    if not path:
        if world.distributed and not world.is_main:
            torch.distributed.barrier()  # rank 0 generates the demo data once; the others then reuse it
        path = str(ensure_demo_dataset(progress=world.is_main))
        if world.distributed and world.is_main:
            torch.distributed.barrier()
    data = config.data
    dataset = resolve_dataset(path, data.format, data.masks, classes=data.classes)
    if data.on_bad_file == "skip" and dataset.kind != "webdataset":
        dataset = without_bad_files(dataset, world, data.max_image_mb)
    val = find_monitor_split(path, data.val, data.val_labels)
    # resolved at start-up: a bad labels file or a class the train split lacks stops the run before training
    return dataset, (resolve_split(val, train=dataset, labels=data.val_labels, classes=data.classes)
                     if val is not None else None)


def without_bad_files(dataset: DatasetSpec, world: World, max_image_mb: float) -> DatasetSpec:
    """`data.on_bad_file = "skip"`: the dataset less its unreadable images (validated once, cached on disk)."""

    if world.distributed and not world.is_main:
        torch.distributed.barrier()  # rank 0 validates with a process pool; the others then hit its cache
    dataset, rejected = filter_bad_files(dataset, max_image_mb=max_image_mb)
    if world.distributed and world.is_main:
        torch.distributed.barrier()
    if rejected and world.is_main:
        path, reason = rejected[0]
        print(f"data.on_bad_file = 'skip': skipping {len(rejected)} unreadable image(s), e.g. {path} ({reason}); "
              f"`relic-fast index` lists them all")
    return dataset


class Trainer:
    """A RELICv2 pretraining run in `out_dir`, single-process or one rank of a `torchrun` job."""

    def __init__(self, config: Config, out_dir: Path, resume: bool = False, validator: Validator | None = None,
                 accept_changes: Collection[str] = (), signals: StopSignals | None = None):
        """Build the run: `resume` continues from `out_dir`'s newest checkpoint, going on with the refused changes
        `accept_changes` names (`relic_fast.resume_rule`); `signals`, the stop handlers `pretrain` installed at
        its start (None: the run installs its own in `train`), are acted on between the phases of the build."""
        self.requested_config = config
        """The config as given ("auto" included): what `config.toml` records and `--resume` compares."""
        self.plan: RunPlan = resolve_plan(config)
        """What runs on this machine, every "auto" resolved once (`plan.toml` in the run folder)."""
        self.config = planned_config(config, self.plan)
        self.out_dir = Path(out_dir)
        self.validator = validator
        self.world: World = init_world(self.plan.torch_device)
        self.resumed_from: Path | None = None
        """The checkpoint `restore` continued from (None for a fresh run)."""
        cadence = config.train
        self.control = RunControl(checkpoint_every=cadence.checkpoint_every,
                                  checkpoint_minutes=cadence.checkpoint_minutes, is_main=self.world.is_main,
                                  group=control_group(), signals=signals)
        """Stop signals and off-schedule checkpoints (`run_control`), agreed by every rank."""
        self._stop_if_signalled("while the ranks joined")
        self.dataset, self.val_dataset = training_dataset(config, self.world)
        self.mask_coverage = check_saliency_masks(self.dataset, config.views)
        """Images with a saliency mask when the recipe masks (None when `views.saliency_p` is 0)."""
        self._stop_if_signalled("while the dataset was resolved")
        self.identity = RunIdentity(config=config.to_dict(), resolved=self._resolved_config(),
                                    dataset=dataset_fingerprint(self.dataset, self.mask_coverage),
                                    ranks=self.world.world_size)
        """What a checkpoint records of this run and `--resume` compares (`relic_fast.resume_rule`)."""
        self._check_batch()
        self.global_batch = config.train.batch_size
        self.peak_lr = scaled_lr(config.optim.base_lr, self.global_batch)
        torch.manual_seed(config.train.seed)  # identical initial weights on every rank
        self.context = self._build_step_context()
        self.probe = self._build_probe()
        torch.manual_seed(config.train.seed + self.world.rank)  # then per-rank randomness (negatives)
        self.step = 0
        self.accepted_changes: list[Change] = []
        """The refused changes this resume goes on with (`--accept-change`), recorded at the start of `train`."""
        self.resume_notes: list[str] = []
        """What the resume says at the start of `train`: accepted changes, an online probe that restarts."""
        self.guard = NonFiniteGuard(self.world.device)
        loader_state = self.restore(accept_changes) if resume else None
        self._stop_if_signalled("while the checkpoint was restored" if resume else "while the networks were built")
        self.loader = self._build_loader(loader_state)
        self._stop_if_signalled("while the data pipeline started")
        self.steps_per_epoch = len(self.loader)
        if self.accepted_changes:
            restart = "" if loader_state is not None else (f"; the data order restarts (epoch "
                                                           f"{self.step // self.steps_per_epoch} from its start)")
            self.resume_notes.insert(0, f"--resume: accepted changes at step {self.step}: "
                                        + ", ".join(change.short() for change in self.accepted_changes) + restart)
        self.total_steps = config.train.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, config.train.max_steps or self.total_steps)
        self.warmup_steps = round(config.optim.warmup_epochs * self.steps_per_epoch)
        self.step_timing: StepTiming | None = None
        """Profile mode (`relic_fast.profiler`): times each step with the device synchronized around it.
        None in normal runs: no extra host syncs."""
        self.warmup_report: dict[str, float] = {}
        """After this process's first step: `first_step_s` (process start to the end of that step: the
        compile warm-up a user waits for) and `compiled_graphs`; every log adds `recompiles` since."""

    @property
    def online(self) -> torch.nn.Module:
        """The multi-view online network as the step calls it (DDP-wrapped when distributed)."""
        return self.context.online

    @property
    def online_module(self) -> torch.nn.Module:
        """The bare online network: what is checkpointed, exported and EMA-tracked."""
        return self.context.online_module

    @property
    def target(self) -> torch.nn.Module:
        """The EMA target network."""
        return self.context.target

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The LARS optimizer of the online network."""
        return self.context.optimizer

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 gradient scaler (None at bf16 and fp32)."""
        return self.context.scaler

    def _check_batch(self) -> None:
        """The global batch must split evenly over ranks and fit the dataset."""
        batch, world = self.config.train.batch_size, self.world.world_size
        if batch % world:
            raise ConfigError(f"train.batch_size = {batch} does not split over {world} ranks; "
                              f"use a multiple of {world}")
        if self.dataset.num_samples < batch and self.config.data.drop_last:
            raise ConfigError(f"train.batch_size = {batch} exceeds the dataset's {self.dataset.num_samples} images "
                              f"({self.dataset.root}); lower it or set data.drop_last = false")

    def _build_step_context(self) -> StepContext:
        """Networks (the online one DDP-wrapped when distributed), LARS and the step, from the shared builder."""
        cfg, world = self.config, self.world
        wrap = None
        if world.distributed:
            ids = [world.device.index] if world.device.type == "cuda" else None
            wrap = lambda online: DistributedDataParallel(online, device_ids=ids, broadcast_buffers=False)  # noqa: E731
        # SyncBatchNorm runs on CUDA only; gloo (CPU) runs keep per-rank BatchNorm statistics.
        sync_batchnorm = world.distributed and cfg.model.sync_batchnorm and world.device.type == "cuda"
        cache = compile_cache_folder(cfg.train.compile_cache, self.out_dir) if self.plan.compile else None
        if cache is not None:
            use_compile_cache(cache)  # before the first compile: inductor reads the folder at each lookup
        return build_step_context(cfg.model, cfg.loss, cfg.optim, device=world.device, precision=cfg.train.precision,
                                  channels_last=cfg.train.channels_last, compiled=self.plan.compile,
                                  compile_mode=cfg.train.compile_mode, compile_scope=cfg.train.compile_scope,
                                  lr=self.peak_lr, sync_batchnorm=sync_batchnorm, wrap=wrap)

    def _build_probe(self) -> OnlineProbe | None:
        """The online probe `eval.online_probe` asks for, on data whose samples all carry a label (else None)."""
        classes = labelled_classes(self.dataset)
        if not self.config.eval.online_probe or not classes:
            return None
        return OnlineProbe(self.online_module.encoder.feature_dim, classes, lr=self.config.eval.online_probe_lr,
                           world=self.world)

    def _monitor_plan(self) -> str:
        """The plan's word on the monitor: the split it scores and what it logs, or why it is off."""
        probe = ("online probe on" if self.probe is not None else
                 "online probe off (the training data has no labels)" if self.config.eval.online_probe else
                 "online probe off")
        every = self.config.train.knn_every_epochs if self.validator is not None else 0
        return f"monitor {describe_monitor(self.val_dataset, every)}; {probe}"

    def _build_loader(self, state: str | None):
        """This rank's shard of the pretraining pipeline: restored to `state` on resume, or, when a resume
        accepted a change of the data or its order (no `state` then), started at the saved step.

        The resume rule has compared everything the loader's own check compares, so its refusal (a ValueError)
        cannot normally happen; should it, it is the same refusal, one line, not a traceback."""
        try:
            return build_pretrain_loader(self.dataset, self.config.views, self.config.data,
                                         batch_size=self.config.train.batch_size // self.world.world_size,
                                         seed=self.config.train.seed, shard_id=self.world.rank,
                                         num_shards=self.world.world_size, device_id=self.plan.dali_device_id,
                                         checkpoint=state, start_step=self.step if state is None else 0)
        except ValueError as err:
            if state is None:
                raise
            raise ResumeMismatchError(f"{self.resumed_from}: --resume cannot restore the data position: {err}; "
                                      f"resume with the saved config (config.toml in the run folder), or start a "
                                      f"new run in another --out folder") from None

    def _resolved_config(self) -> dict[str, dict[str, Any]]:
        """The config as it runs on this machine, every "auto" the resume rule compares resolved (views'
        interpolation, the loss and LARS implementation, the pipeline's device)."""
        resolved = self.config.to_dict()
        resolved["data"]["device"] = "cpu" if self.plan.dali_device_id is None else "gpu"
        return resolved

    def _stop_if_signalled(self, during: str) -> None:
        """Before the first step: raise `RunStopped` (exit 75) if any rank received a stop signal, every rank at
        this same point (a collective on the control group). Nothing was trained or written yet."""
        stop, _ = self.control.agree_between_steps(failed=False)
        if stop is None:
            return
        if self.resumed_from is not None:
            again = f"`--resume` continues from {self.resumed_from.name} (step {self.step})"
        else:
            again = "run the same command again to start"
        raise RunStopped(f"{stop} received before the first step ({during}): no step trained, nothing written; "
                         f"{again}")

    # ---------------------------------------------------------------- the loop
    def train(self, save_final: bool = True) -> dict[str, Any]:
        """Run until `last_step`; return a summary (final loss, checkpoint path, throughput).

        A stop signal (`run_control`) ends the run at an agreed step: checkpoint, then `RunStopped`.
        `save_final=False` (profiling) skips the final checkpoint. A resumed run already at `last_step` (or
        past it: `--steps` lower than the checkpoint's step) raises `NothingToDo` before it writes anything."""
        if self.step >= self.last_step:
            limit = (f"--steps {self.config.train.max_steps} (train.max_steps)"
                     if self.config.train.max_steps and self.step >= self.config.train.max_steps
                     else f"train.epochs = {self.config.train.epochs} ({self.total_steps} steps)")
            where = f" ({self.resumed_from.name})" if self.resumed_from else ""
            raise NothingToDo(f"{self.out_dir} is already at step {self.step}{where}, at or past {limit}: no step "
                              f"trained, no checkpoint written; raise --steps to train on")
        self._stop_if_signalled("as training began")
        if self.resumed_from is not None and self.world.is_main:
            print(f"resumed from {self.resumed_from} (step {self.step})")
        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.toml").write_text(to_toml(self.requested_config))
            (self.out_dir / "plan.toml").write_text(self.plan.to_toml())
        summary: dict[str, Any] = {"start_step": self.step}
        with self.control, RunMonitor(self.out_dir, self.last_step, self.step, enabled=self.world.is_main) as monitor:
            self.monitor = monitor
            monitor.message("plan: " + ", ".join(f"{key} {value}" for key, value in self.plan.rows()))
            monitor.message(f"saliency masks: {describe_masks(self.mask_coverage)}")
            monitor.message(self._monitor_plan())
            for note in self.resume_notes:
                monitor.message(escape(note))
            if self.accepted_changes:  # the run's record says where it stopped being the run it was
                monitor.record(self.step, {"accepted_changes": {c.key: c.record() for c in self.accepted_changes}})
            try:
                summary.update(self._run_steps())
            except NonFiniteLossError as err:
                saved = list_checkpoints(self.out_dir)
                good = f"the newest checkpoint, {saved[-1]}, is the last good state" if saved else \
                    "no checkpoint was written before it"
                monitor.message(f"[bold red]stopped:[/] {escape(str(err))} (found at step {self.step}); {good}")
                raise
            summary["checkpoint"] = self.save() if save_final else None
        summary["steps"] = self.step
        stopped_by = summary.pop("stopped_by")
        if stopped_by:
            saved = f" and saved {summary['checkpoint']}; `--resume` continues" if summary["checkpoint"] else ""
            raise RunStopped(f"{stopped_by} received; finished step {self.step}{saved}")
        return summary

    def _run_steps(self) -> dict[str, Any]:
        """Epochs of loader batches until `last_step`, logging and checkpointing on the way."""
        window = LoggingWindow(self.world.device)
        last: dict[str, Any] = {}
        stopped_by = None
        for epoch in range(self.step // self.steps_per_epoch, self.config.train.epochs):
            for batch, data_wait_s in self._timed_batches():
                self._train_on(batch, data_wait_s, window)
                decision = self.control.after_step(self.step)  # the same on every rank
                stopped_by = decision.stop if self.step < self.last_step else None  # a finished run just ends
                if self.step % self.config.train.log_every == 0 or self.step == self.last_step or stopped_by:
                    last = self._log(window)
                if stopped_by or self.step >= self.last_step:
                    break  # `train` writes the checkpoint
                if decision.checkpoint:
                    self.save()
            if self.step % self.steps_per_epoch == 0 and not stopped_by:
                stopped_by = self._validate(epoch + 1)
            if stopped_by or self.step >= self.last_step:
                break
        return {"final_loss": last.get("loss", math.nan), "images_per_s": last.get("images_per_s", math.nan),
                "last_metrics": last, **self.warmup_report, "recompiles": self.recompiles(), "stopped_by": stopped_by}

    def _timed_batches(self) -> Iterator[tuple[Any, float]]:
        """The rest of this epoch's batches, each with the seconds the loop waited for it."""
        batches = iter(self.loader)
        while True:
            fetch_start = time.perf_counter()
            with record_function("data"):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch, time.perf_counter() - fetch_start

    def _train_on(self, batch, data_wait_s: float, window: LoggingWindow) -> None:
        """One optimizer step on `batch` at this step's learning rate and EMA decay."""
        if self.step_timing is not None:
            self.step_timing.sync()
        step_start = time.perf_counter()
        with record_function("prepare_views"):
            inputs = prepare_views(batch, self.config.views, self.world.device, self.config.train.channels_last)
        lr = learning_rate(self.step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                           peak_lr=self.peak_lr)
        tau = ema_tau(self.step, total_steps=self.total_steps, tau_base=self.config.optim.tau_base)
        terms = train_step(self.context, inputs, lr, tau, self.global_batch)
        self.guard.record(terms, self.step + 1)  # on the device; read at the next log or checkpoint
        if self.probe is not None:
            with record_function("online_probe"):
                self.probe.train_on(self.context.large_features, batch.labels)
        if self.step_timing is not None:
            self.step_timing.sync()
            self.step_timing.record(data_wait_s, time.perf_counter() - step_start)
        self.step += 1
        window.add(terms, data_wait_s, lr=lr, tau=tau)
        if not self.warmup_report:
            self._record_warmup()

    def _record_warmup(self) -> None:
        """Once, after this process's first step: how long start-up and compilation took, and how many
        graphs were compiled (a one-time host sync, so the time includes the step's device work)."""
        if self.world.device.type == "cuda":
            torch.cuda.synchronize(self.world.device)
        self.warmup_report = {"first_step_s": process_age_s(), "compiled_graphs": compiled_graph_count()}
        self.monitor.message(f"first step done {self.warmup_report['first_step_s']:.1f} s after process start "
                             f"({self.warmup_report['compiled_graphs']} compiled graph(s))")

    def recompiles(self) -> int:
        """Graphs compiled after this process's first step: 0 when every step reuses the first compilation."""
        if not self.warmup_report:
            return 0
        return compiled_graph_count() - int(self.warmup_report["compiled_graphs"])

    def _log(self, window: LoggingWindow) -> dict[str, Any]:
        """Read the window's metrics from the device (a host sync point), hand them to the monitor, start a new window."""
        mean_terms, steps, elapsed, data_wait, lr, tau = window.close()
        total, contrastive, invariance = all_reduce_mean(mean_terms).tolist()  # note: CPU-GPU sync point
        self._check_finite()
        metrics = {"epoch": self.step / self.steps_per_epoch, "loss": total, "contrastive": contrastive,
                   "invariance": invariance, "lr": lr, "tau": tau,
                   "images_per_s": steps * self.global_batch / max(elapsed, 1e-9),
                   "data_wait_pct": 100.0 * data_wait / max(elapsed, 1e-9),
                   **self.warmup_report, "recompiles": self.recompiles()}
        if self.probe is not None:
            metrics["online_probe_train_top1"] = self.probe.train_top1()
        self.monitor.log(self.step, metrics)
        return metrics

    def _validate(self, epochs_done: int) -> str | None:
        """At an epoch's end, when the validator asks: the monitor's metrics of the online encoder (and of the
        online probe), every rank taking part. Returns the stop signal that arrived meanwhile (the loop then
        stops as after a step). An error in the monitor on any rank: every rank checkpoints, then stops with
        `MonitorError`, so no work is lost to it."""
        if self.validator is None or self.val_dataset is None or not self.validator.should_validate(epochs_done):
            return None
        heads = {}
        if self.probe is not None:
            self.probe.sync_statistics()
            self.probe.eval()
            heads["online_probe_top1"] = self.probe
        metrics, error = {}, None
        try:
            metrics = self.validator.validate(self.online_module.encoder, train_dataset=self.dataset,
                                              val_dataset=self.val_dataset, world=self.world, heads=heads,
                                              should_stop=self.control.stop_received)
        except MonitorInterrupted:
            pass
        except Exception as err:  # noqa: BLE001 - any failure of the monitor: checkpoint first, then stop
            error = err
        stop, failed = self.control.agree_between_steps(failed=error is not None)
        if failed:
            saved = self.save()
            where = f"saved {saved}; `--resume` continues" if saved else "checkpoint saved by rank 0"
            cause = f"{type(error).__name__}: {error}" if error is not None else "on another rank"
            raise MonitorError(f"the monitor failed after epoch {epochs_done} ({cause}); {where} "
                               f"(train.knn_every_epochs = 0 turns the monitor off)") from error
        if stop is None:
            self.monitor.log(self.step, {"epoch": float(epochs_done), **metrics})
        return stop

    # ---------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        """Everything `restore` needs to continue exactly: every rank's loader position and random state (each
        rank draws its own sampled negatives), gathered in one collective, and what the resume rule compares."""
        rng = {"cpu": torch.get_rng_state()}
        if self.world.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.world.device)
        per_rank: list[Any] = [(self.loader.checkpoint(), rng)]
        if self.world.distributed:
            gathered: list[Any] = [None] * self.world.world_size
            torch.distributed.all_gather_object(gathered, per_rank[0])
            per_rank = gathered
        return {"step": self.step, **self.identity.to_state(), "online": self.online_module.state_dict(),
                "target": self.target.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "rng": [rank_rng for _, rank_rng in per_rank], "loader": [loader for loader, _ in per_rank],
                "online_probe": self.probe.state() if self.probe is not None else None}

    def _check_finite(self) -> None:
        """Raise `NonFiniteLossError` if any rank's loss was not finite since the start (a host sync point)."""
        reduce_min = None
        if self.world.distributed:
            def reduce_min(first_step: torch.Tensor) -> torch.Tensor:
                first_step = first_step.clone()
                torch.distributed.all_reduce(first_step, op=torch.distributed.ReduceOp.MIN)
                return first_step
        self.guard.check(reduce_min)

    def save(self) -> Path | None:
        """Checkpoint the current state (rank 0 writes; every rank takes part in gathering loader states).

        The non-finite guard is checked first, so no checkpoint holds a state updated by a non-finite loss."""
        self._check_finite()
        state = self._state()
        if not self.world.is_main:
            return None
        return save_checkpoint(state, self.out_dir, self.step, self.config.train.keep_checkpoints)

    def restore(self, accept_changes: Collection[str] = ()) -> str | None:
        """Load the newest usable checkpoint of `out_dir` (skipping corrupt ones); returns this rank's loader state,
        or None when there is none or the data must restart at the saved step (an accepted change of the data or
        its order: the saved position belongs to the old order).

        The resume rule (`relic_fast.resume_rule`) decides first, before anything is loaded or the loader is
        built: a refused change not in `accept_changes` stops here, every one named (`ResumeMismatchError`)."""
        found = latest_checkpoint(self.out_dir, warn=lambda text: print(text) if self.world.is_main else None)
        if not same_on_every_rank(found[0].name if found else None):
            raise ResumeMismatchError(f"--resume: the ranks found different checkpoints in {self.out_dir}; with "
                                      f"several nodes, --out must be a folder that every node shares (NFS, Lustre, ...)")
        if found is None:
            if self.world.is_main:
                print(f"--resume: no checkpoint in {self.out_dir}, starting from scratch")
            return None
        path, state = found
        changes = check_resumable(path, state, self.identity, accept_changes)
        self.online_module.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self._restore_optimizer(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self._restore_probe(state.get("online_probe"), changes)
        self._restore_rng(state["rng"])
        self.step = state["step"]
        self.resumed_from = path  # `train` says so, or that no step is left to train
        self.accepted_changes = [change for change in changes if change.refused]
        if any(change.rule.restarts_data for change in self.accepted_changes):
            return None  # `_build_loader` starts the new order at the saved step
        return state["loader"][self.world.rank]

    def _restore_optimizer(self, saved: dict[str, Any]) -> None:
        """The saved optimizer state (momentum buffers) under the config's hyper-parameters: a loaded state
        dict brings its own weight decay, momentum and trust coefficient, which a resume that accepted new ones
        must not silently keep (with no accepted change the two agree; the lr is set every step)."""
        configured = [{key: value for key, value in group.items() if key != "params"}
                      for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(saved)
        for group, settings in zip(self.optimizer.param_groups, configured):
            group.update(settings)

    def _restore_probe(self, saved: dict[str, Any] | None, changes: list[Change]) -> None:
        """Continue the online probe from the checkpoint, or restart it from zero when its settings or the
        classes changed (its head would not be the one trained so far), and say so."""
        if self.probe is None:
            return
        changed = [change.short() for change in changes if change.key.startswith("eval.online_probe")]
        if saved is None:
            why = "it was off in the checkpoint"
        elif changed:
            why = ", ".join(changed)
        elif saved["module"]["linear.weight"].shape != self.probe.linear.weight.shape:
            why = "the number of classes changed"
        else:
            self.probe.restore(saved)
            return
        self.resume_notes.append(f"online probe restarts from zero: {why}")

    def _restore_rng(self, saved: dict[str, Any] | list[dict[str, Any]]) -> None:
        """This rank's random state (each rank draws its own sampled negatives). An older checkpoint holds rank
        0's alone, which every rank then takes; a rank the checkpoint did not have (more ranks, accepted) keeps
        its fresh per-rank seed."""
        if isinstance(saved, list):
            saved = saved[self.world.rank] if self.world.rank < len(saved) else None
        if saved is None:
            return
        torch.set_rng_state(saved["cpu"])
        if "cuda" in saved and self.world.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda"], self.world.device)


def pretrain(config: Config, *, out_dir: Path, resume: bool = False, validator: Validator | None = None,
             accept_changes: Collection[str] = (), signals: StopSignals | None = None) -> dict[str, Any]:
    """Run (or resume) RELICv2 pretraining as `config` says, writing into `out_dir`; returns a summary.

    `validator` (e.g. the kNN monitor, `KnnValidator.from_config`) runs at epoch ends when it asks to.
    `accept_changes` (`--accept-change`): the refused changes a resume goes on with (`relic_fast.resume_rule`).

    The stop handlers are installed first (or were, by the caller: `signals`), so that SIGTERM, SIGINT or
    SIGUSR1 before the first step (dataset validation, restore, the pipeline's start) ends the run with
    `RunStopped` (exit 75) at the next boundary of the build, nothing written, instead of killing it. Rank 0
    holds `out_dir`'s lock (`runlock`) for the whole run: a second run into the same folder fails."""
    with nullcontext(signals) if signals is not None else StopSignals() as signals:
        accepted = check_accept_keys(accept_changes)
        if accepted and not resume:
            raise ConfigError(f"--accept-change {sorted(accepted)[0]}: only a --resume can accept a change")
        rank, world_size = launch_rank()
        if rank == 0 and (warning := torchrun_signal_warning()) is not None:
            print(warning)
        lock = RunLock(out_dir).acquire() if rank == 0 else None
        if lock is not None and lock.note:
            print(lock.note)
        if lock is not None:  # only the lock holder may: a live run's temporary file is a write in progress
            remove_interrupted_writes(out_dir, report=print)
        try:
            trainer = Trainer(config, out_dir, resume=resume, validator=validator, accept_changes=accepted,
                              signals=signals)
            try:
                summary = trainer.train()
                if trainer.world.is_main:
                    summary["curves"] = plot_run(out_dir)  # once, at the end: `relic-fast plot RUN` redraws any time
                return summary
            finally:
                if world_size > 1:
                    close_world()
        finally:
            if lock is not None:
                lock.release()
