"""The pretraining job: build everything from a `Config`, run steps, log, checkpoint, resume exactly.

Read top-down: `Trainer.__init__` resolves the run plan (`run_plan`: every "auto" decided once) into the
one config of the run, then builds the world, the data (`data_plan`), the networks and the step
(`run_parts`) and, on resume, puts the saved run back (`run_state`). `train` is `relic-fast pretrain`'s
run: passes over the loader until `last_step`, each step through `train_step`, checkpoints, the `Validator`
(e.g. the kNN monitor, handed in) at epoch ends. `run_steps` is the same loop for N steps on any loader with
an optional `StepTiming` hook and no checkpoint: what `bench train` and `profile` measure. Both log through a
`LoggingWindow` (`loop`); `_log`, `save` are the bookkeeping. Only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator

import torch
from rich.markup import escape
from torch.profiler import record_function

from relic_fast.checkpoint import list_checkpoints, remove_interrupted_writes, save_checkpoint
from relic_fast.config import Config, ConfigError, to_toml
from relic_fast.data_plan import (check_batch, check_saliency_masks, describe_masks, describe_monitor, describe_probe,
                                  training_dataset)
from relic_fast.distributed import World, all_reduce_mean, close_world, control_group, init_world, launch_rank
from relic_fast.errors import NothingToDo, RunStopped
from relic_fast.loop import LoggingWindow, StepTiming, Validator, WarmupReport, run_validator, timed_batches
from relic_fast.loss import LOSS_METRICS
from relic_fast.monitor import RunMonitor
from relic_fast.plot import plot_run
from relic_fast.resume_rule import Change, RunIdentity, check_accept_keys, dataset_fingerprint
from relic_fast.run_control import RunControl
from relic_fast.run_parts import online_probe, rank_loader, resolved_config, run_step_context
from relic_fast.run_plan import RunPlan, planned_config, resolve_plan
from relic_fast.run_state import find_saved_run, load_saved_run, training_state
from relic_fast.runlock import RunLock
from relic_fast.schedules import ema_tau, learning_rate, scaled_lr
from relic_fast.stop_signals import StopSignals, torchrun_signal_warning
from relic_fast.step import NonFiniteGuard, NonFiniteLossError, prepare_views, train_step


class Trainer:
    """A RELICv2 pretraining run in `out_dir`, single-process or one rank of a `torchrun` job: `train` runs it as
    `relic-fast pretrain` does; `run_steps` runs N steps of the same loop on any loader, with an optional
    per-step hook and no checkpoint (what `relic-fast bench train` and `relic-fast profile` measure)."""

    def __init__(self, config: Config, out_dir: Path, resume: bool = False, validator: Validator | None = None,
                 accept_changes: Collection[str] = (), signals: StopSignals | None = None):
        """Build the run: `resume` continues from `out_dir`'s newest checkpoint, going on with the refused changes
        `accept_changes` names (`relic_fast.resume_rule`); `signals`, the stop handlers `pretrain` installed at
        its start (None: the run installs its own while steps run), are acted on between the phases of the build.

        `config` as given ("auto" included) is read here only for the run's record, `config.toml` and what
        `--resume` compares; everything else reads `self.config`, the one config of the run."""
        self.plan: RunPlan = resolve_plan(config)
        """What runs on this machine, every "auto" resolved once (`plan.toml` in the run folder)."""
        self.config = planned_config(config, self.plan)
        """The config as it runs here: the given one with the plan's choices written in (no "auto" left)."""
        self.run_files = {"config.toml": to_toml(config), "plan.toml": self.plan.to_toml()}
        """The run folder's record of the run, written when steps start: the config as given, and the plan."""
        self.out_dir = Path(out_dir)
        self.validator = validator
        self.world: World = init_world(self.plan.torch_device)
        self.resumed_from: Path | None = None
        """The checkpoint the run continued from (None for a fresh run)."""
        train = self.config.train
        self.control = RunControl(checkpoint_every=train.checkpoint_every, checkpoint_minutes=train.checkpoint_minutes,
                                  is_main=self.world.is_main, group=control_group(), signals=signals)
        """Stop signals and off-schedule checkpoints (`run_control`), agreed by every rank."""
        self.monitor: RunMonitor | None = None
        """The display and metrics.jsonl, open while steps run (`train`, `run_steps`)."""
        self._stop_if_signalled("while the ranks joined")
        self._resolve_data(config)
        self._stop_if_signalled("while the dataset was resolved")
        self._build_networks()
        saved = find_saved_run(self.out_dir, self.identity, self.world, accept_changes) if resume else None
        if saved is not None:
            self.resume_notes += load_saved_run(saved, self.context, self.probe, self.world)
            self.step, self.resumed_from, self.accepted_changes = saved.step, saved.path, saved.accepted_changes
        self._stop_if_signalled("while the checkpoint was restored" if resume else "while the networks were built")
        self._start_data(saved.loader_state(self.world.rank) if saved is not None else None)
        self._stop_if_signalled("while the data pipeline started")

    def _resolve_data(self, config: Config) -> None:
        """The dataset and the monitor's split, the masks checked, and what `--resume` compares of the run."""
        self.dataset, self.val_dataset = training_dataset(self.config, self.world)
        self.mask_coverage = check_saliency_masks(self.dataset, self.config.views)
        """Images with a saliency mask when the recipe masks (None when `views.saliency_p` is 0)."""
        self.identity = RunIdentity(config=config.to_dict(), resolved=resolved_config(self.config, self.plan),
                                    dataset=dataset_fingerprint(self.dataset, self.mask_coverage),
                                    ranks=self.world.world_size)
        """What a checkpoint records of this run and `--resume` compares (`relic_fast.resume_rule`)."""
        check_batch(self.config, self.world.world_size, self.dataset)

    def _build_networks(self) -> None:
        """The step context (networks, LARS, the step) and the online probe, at step 0."""
        train = self.config.train
        self.global_batch = train.batch_size
        self.peak_lr = scaled_lr(self.config.optim.base_lr, self.global_batch)
        torch.manual_seed(train.seed)  # identical initial weights on every rank
        self.context = run_step_context(self.config, self.plan, self.world, self.out_dir, self.peak_lr)
        self.probe = online_probe(self.config, self.dataset, self.online_module.encoder.feature_dim, self.world)
        torch.manual_seed(train.seed + self.world.rank)  # then per-rank randomness (negatives)
        self.step = 0
        self.accepted_changes: list[Change] = []
        """The refused changes this resume goes on with (`--accept-change`), recorded at the start of `train`."""
        self.resume_notes: list[str] = []
        """What the resume says at the start of `train`: accepted changes, an online probe that restarts."""
        self.guard = NonFiniteGuard(self.world.device)

    def _start_data(self, loader_state: str | None) -> None:
        """This rank's loader (at the saved position, or at the saved step's epoch when a resume accepted a change
        of the data or its order) and the schedule lengths in its epochs."""
        self.loader = rank_loader(self.config, self.plan, self.world, self.dataset, state=loader_state,
                                  start_step=self.step, resumed_from=self.resumed_from)
        self.steps_per_epoch = len(self.loader)
        """Batches per epoch of the run's own data: the unit of the schedules and of the logged epoch."""
        if self.accepted_changes:
            self._note_accepted_changes(data_restarts=loader_state is None)
        train = self.config.train
        self.total_steps = train.epochs * self.steps_per_epoch
        self.last_step = min(self.total_steps, train.max_steps or self.total_steps)
        self.warmup_steps = round(self.config.optim.warmup_epochs * self.steps_per_epoch)
        self.warmup = WarmupReport()
        """After this process's first step: how long start-up and compiling took; every log adds `recompiles`."""

    @property
    def online_module(self) -> torch.nn.Module:
        """The bare online network: what is checkpointed, exported and EMA-tracked."""
        return self.context.online_module

    @property
    def target(self) -> torch.nn.Module:
        """The EMA target network."""
        return self.context.target

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
    def train(self) -> dict[str, Any]:
        """Run until `last_step` as `relic-fast pretrain` does; return a summary (final loss, checkpoint path,
        throughput).

        Checkpoints on the `train.checkpoint_every` / `checkpoint_minutes` schedule and at the end; the validator
        runs at the epoch ends it asks for. A stop signal (`run_control`) ends the run at an agreed step:
        checkpoint, then `RunStopped`. A resumed run already at `last_step` (or past it: `--steps` lower than the
        checkpoint's step) raises `NothingToDo` before it writes anything."""
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
        summary: dict[str, Any] = {"start_step": self.step}
        with self._steps_running(self.last_step) as monitor:
            for note in self.resume_notes:
                monitor.message(escape(note))
            if self.accepted_changes:  # the run's record says where it stopped being the run it was
                monitor.record(self.step, {"accepted_changes": {c.key: c.record() for c in self.accepted_changes}})
            summary.update(self._passes_until(self.last_step, self.loader, log_every=self.config.train.log_every,
                                              step_timing=None, checkpoints_and_validation=True))
            summary["checkpoint"] = self.save()
        return self._summary_or_stop(summary)

    def run_steps(self, steps: int, loader: Iterable[Any] | None = None, *, log_every: int | None = None,
                  step_timing: StepTiming | None = None) -> dict[str, Any]:
        """Train `steps` more optimizer steps on `loader` (default: the run's own) and return the summary, as
        `train` does: the public way to run the trainer's loop for a measurement (`relic-fast bench train`,
        `relic-fast profile`).

        The same step, schedules, logging (every `log_every` steps, default `train.log_every`, into the run
        folder's metrics.jsonl) and stop signals as `train`, without checkpoints or validator passes.
        `loader` yields view batches (`dali_pipelines.batch.ViewBatch`), restarted as often as needed; the
        schedules and the logged epoch keep counting in the run's own epochs (`steps_per_epoch`).
        `step_timing` times each step with the device synchronized around it (the profiler's hook)."""
        if steps < 1:
            raise ValueError(f"run_steps needs at least one step, got {steps}")
        last_step = self.step + steps
        summary: dict[str, Any] = {"start_step": self.step}
        with self._steps_running(last_step):
            summary.update(self._passes_until(last_step, self.loader if loader is None else loader,
                                              log_every=log_every or self.config.train.log_every,
                                              step_timing=step_timing, checkpoints_and_validation=False))
            summary["checkpoint"] = None
        return self._summary_or_stop(summary)

    @contextmanager
    def _steps_running(self, last_step: int) -> Iterator[RunMonitor]:
        """What `train` and `run_steps` share around their steps: the run files written (rank 0), the stop
        control entered, the monitor open (display up to `last_step`, metrics.jsonl) and the plan said; a
        non-finite loss is reported with the last good checkpoint before it propagates."""
        if self.world.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name, text in self.run_files.items():
                (self.out_dir / name).write_text(text)
        with self.control, RunMonitor(self.out_dir, last_step, self.step, enabled=self.world.is_main,
                                      loss_metrics=LOSS_METRICS) as monitor:
            self.monitor = monitor
            monitor.message("plan: " + ", ".join(f"{key} {value}" for key, value in self.plan.rows()))
            monitor.message(f"saliency masks: {describe_masks(self.mask_coverage)}")
            every = self.config.train.knn_every_epochs if self.validator is not None else 0
            monitor.message(f"monitor {describe_monitor(self.val_dataset, every)}; "
                            f"{describe_probe(self.probe is not None, self.config.eval.online_probe)}")
            try:
                yield monitor
            except NonFiniteLossError as err:
                saved = list_checkpoints(self.out_dir)
                good = f"the newest checkpoint, {saved[-1]}, is the last good state" if saved else \
                    "no checkpoint was written before it"
                monitor.message(f"[bold red]stopped:[/] {escape(str(err))} (found at step {self.step}); {good}")
                raise

    def _summary_or_stop(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary of steps that ended, with the step reached; `RunStopped` when a stop signal ended them."""
        summary["steps"] = self.step
        stopped_by = summary.pop("stopped_by")
        if stopped_by:
            saved = f" and saved {summary['checkpoint']}; `--resume` continues" if summary["checkpoint"] else ""
            raise RunStopped(f"{stopped_by} received; finished step {self.step}{saved}")
        return summary

    def _passes_until(self, last_step: int, loader: Iterable[Any], *, log_every: int,
                      step_timing: StepTiming | None, checkpoints_and_validation: bool) -> dict[str, Any]:
        """Passes over `loader` until `last_step` (or an agreed stop), logging every `log_every` steps; with
        `checkpoints_and_validation` (the pretraining run), checkpoints on schedule and validates at epoch ends."""
        window = LoggingWindow(self.world.device)
        last: dict[str, Any] = {}
        stopped_by = None
        while self.step < last_step and not stopped_by:
            pass_start = self.step
            for batch, data_wait_s in timed_batches(loader):
                self._train_on(batch, data_wait_s, window, step_timing)
                decision = self.control.after_step(self.step)  # the same on every rank
                stopped_by = decision.stop if self.step < last_step else None  # a finished run just ends
                if self.step % log_every == 0 or self.step == last_step or stopped_by:
                    last = self._log(window)
                if stopped_by or self.step >= last_step:
                    break  # the caller checkpoints
                if decision.checkpoint and checkpoints_and_validation:
                    self.save()
            if self.step == pass_start:
                raise RuntimeError("the loader yielded no batch: nothing to train on")
            if checkpoints_and_validation and self.step % self.steps_per_epoch == 0 and not stopped_by:
                stopped_by = self._validate(self.step // self.steps_per_epoch)
        return {"final_loss": last.get("loss", math.nan), "images_per_s": last.get("images_per_s", math.nan),
                "last_metrics": last, **self.warmup.metrics(), "stopped_by": stopped_by}

    def _train_on(self, batch, data_wait_s: float, window: LoggingWindow, step_timing: StepTiming | None) -> None:
        """One optimizer step on `batch` at this step's learning rate and EMA decay, timed by `step_timing`."""
        if step_timing is not None:
            step_timing.sync()
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
        if step_timing is not None:
            step_timing.sync()
            step_timing.record(data_wait_s, time.perf_counter() - step_start)
        self.step += 1
        window.add(terms, data_wait_s, lr=lr, tau=tau)
        if not self.warmup.values:
            self.monitor.message(self.warmup.record(self.world.device))

    def _log(self, window: LoggingWindow) -> dict[str, Any]:
        """Read the window's metrics from the device (a host sync point), hand them to the monitor, start a new window."""
        mean_terms, steps, elapsed, data_wait, lr, tau = window.close()
        losses = dict(zip(LOSS_METRICS, all_reduce_mean(mean_terms).tolist()))  # note: CPU-GPU sync point
        self._check_finite()
        metrics = {"epoch": self.step / self.steps_per_epoch, **losses, "lr": lr, "tau": tau,
                   "images_per_s": steps * self.global_batch / max(elapsed, 1e-9),
                   "data_wait_pct": 100.0 * data_wait / max(elapsed, 1e-9),
                   **self.warmup.metrics()}
        if self.probe is not None:
            metrics["online_probe_train_top1"] = self.probe.train_top1()
        self.monitor.log(self.step, metrics)
        return metrics

    def _validate(self, epochs_done: int) -> str | None:
        """At an epoch's end, when the validator asks: the monitor's metrics of the online encoder (and of the
        online probe), every rank taking part (`loop.run_validator`). Returns the stop signal that arrived
        meanwhile (the loop then stops as after a step). An error in the monitor on any rank: every rank
        checkpoints, then stops with `MonitorError`, so no work is lost to it."""
        if self.validator is None or self.val_dataset is None or not self.validator.should_validate(epochs_done):
            return None
        heads = {}
        if self.probe is not None:
            self.probe.sync_statistics()
            self.probe.eval()
            heads["online_probe_top1"] = self.probe
        metrics, stop = run_validator(self.validator, self.online_module.encoder, train_dataset=self.dataset,
                                      val_dataset=self.val_dataset, world=self.world, heads=heads,
                                      control=self.control, checkpoint=self.save, epochs_done=epochs_done)
        if stop is None:
            self.monitor.log(self.step, {"epoch": float(epochs_done), **metrics})
        return stop

    # ---------------------------------------------------------------- state
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
        state = training_state(self.step, self.identity, self.context, self.probe, self.loader.checkpoint(),
                               self.world)
        if not self.world.is_main:
            return None
        return save_checkpoint(state, self.out_dir, self.step, self.config.train.keep_checkpoints)

    def _note_accepted_changes(self, data_restarts: bool) -> None:
        """Put the changes this resume accepted first among the resume notes, and whether the data order
        restarts (an accepted change of the data or its order) at the saved step's epoch."""
        restart = (f"; the data order restarts (epoch {self.step // self.steps_per_epoch} from its start)"
                   if data_restarts else "")
        self.resume_notes.insert(0, f"--resume: accepted changes at step {self.step}: "
                                    + ", ".join(change.short() for change in self.accepted_changes) + restart)

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
                    # once, at the end: `relic-fast plot RUN` redraws any time
                    summary["curves"] = plot_run(out_dir, loss_metrics=LOSS_METRICS)
                return summary
            finally:
                if world_size > 1:
                    close_world()
        finally:
            if lock is not None:
                lock.release()
