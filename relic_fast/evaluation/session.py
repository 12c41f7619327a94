"""One linear evaluation as a job: its ranks, stop signals, checkpoints, live progress and cost.

`protocol.linear_eval` runs in phases, each a sequence of steps that every rank takes together:

- `augmented` (`eval.linear_mode = "augmented"`): the probe's SGD steps on random crops, the frozen
  encoder running on every batch; each rank reads its shard, the gradients are all-reduced
  (`linear.sharded_step`);
- `extract` (`cached_features`, `logistic`): one pass of the train split's val-style features, each
  rank its shard;
- `fit`: the probe on those features, all-gathered in dataset order so that every rank fits the same
  problem as one process would (SGD steps, or the L-BFGS fits of the L2 grid);
- `score`: each validation split, each rank its shard; the hits are all-reduced.

After every step `EvalSession.boundary` asks `run_control.RunControl` (the pretraining's stop handling,
as is) what to do. On SIGTERM, SIGINT or SIGUSR1 (or every `eval.checkpoint_minutes`) every rank hands
its part of the phase's state (loader positions, partial features, hit counts), rank 0 writes one
checkpoint `OUT/checkpoints/step-<n>.pt`, and on a signal the run ends with `RunStopped` (exit 75).
`--resume` reads the newest one and each phase continues from it, the DALI loaders restored to the same
position and random state: the same result as a run never stopped.

The folder (`--out DIR`) holds `linear_eval.json` (the report), `head.pt` (the trained probe,
`classifier.save_head`), `metrics.jsonl` (the progress lines) and `checkpoints/`. Rank 0 holds its
`run.lock` while it runs. A checkpoint is a dict of tensors and plain values with the key
`linear_eval` (what the evaluation is: `identity`, compared on `--resume`), `step`, `world_size`,
`phase` and the phase's state; only the newest is kept.

Without a folder (the demo experiment's in-process evaluations) there are no signals, checkpoints or
display: `EvalSession.local`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from relic_fast.checkpoint import (CheckpointError, checkpoint_path, latest_checkpoint, list_checkpoints,
                                   read_checkpoint, save_checkpoint)
from relic_fast.distributed import (World, all_gather_rows, close_world, control_group, init_world,
                                    same_on_every_rank)
from relic_fast.environment import synchronize
from relic_fast.errors import ExitCode, RelicFastError, ResumeMismatchError, RunStopped
from relic_fast.monitor import RunMonitor
from relic_fast.run_control import RunControl

KIND = "linear_eval"
"""The key that marks a linear evaluation's checkpoint (`checkpoint.read_checkpoint(required=KIND)`)."""
REPORT_FILE = "linear_eval.json"
LOG_SECONDS = {True: 1.0, False: 30.0}
"""Seconds between progress records: on a terminal (live bar), else (a log file: one line each)."""
EVERY_STEP = 2 ** 62
"""`RunControl.checkpoint_every` for no step-count checkpoints: only signals and the wall clock."""


class LinearEvalError(RelicFastError, ValueError):
    """A linear evaluation the given folder or flags cannot run; the message says what to do instead."""

    exit_code = ExitCode.CONFIG
    label = "linear-eval error"


class _Stop(Exception):
    """A stop signal was agreed at a step boundary and the checkpoint written (internal)."""

    def __init__(self, signal_name: str, path: Path):
        super().__init__(signal_name)
        self.signal_name, self.path = signal_name, path


def eval_folder(out: Path | None, checkpoint: Path | None) -> tuple[Path, Path]:
    """(the evaluation's folder, its report file) for `--out`.

    `--out DIR`: DIR/linear_eval.json; `--out FILE.json` (older form): FILE.json, and the folder FILE
    without its suffix beside it. Default: `linear_eval/` in the checkpoint's run folder, or
    `runs/random_init/` for `--random-init` (`checkpoint` None)."""
    if out is not None:
        out = Path(out)
        if out.suffix == ".json":
            return out.with_suffix(""), out
        return out, out / REPORT_FILE
    if checkpoint is None:
        folder = Path("runs/random_init")
    else:
        checkpoint = Path(checkpoint)
        run = checkpoint if checkpoint.is_dir() else checkpoint.parent
        if not checkpoint.is_dir() and run.name == "checkpoints":
            run = run.parent
        folder = run / "linear_eval"
    return folder, folder / REPORT_FILE


def is_eval_checkpoint(path: Path) -> bool:
    """Whether `path` is a linear evaluation's checkpoint (the tensors mapped, not read: cheap)."""
    try:
        read_checkpoint(path, mmap=True, required=KIND)
    except CheckpointError:
        return False
    return True


def plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples as lists): how identities compare."""
    return json.loads(json.dumps(value, default=str))


def flat(identity: dict) -> dict:
    """An identity with its sections' keys spelled out (`eval.linear_epochs`), as a mismatch names them."""
    return {f"{key}.{inner}" if isinstance(value, dict) else key: item
            for key, value in identity.items()
            for inner, item in (value.items() if isinstance(value, dict) else [(None, value)])}


class EvalSession:
    """What the phases of one linear evaluation share: the ranks, stop/checkpoint decisions, the live
    display (rank 0), the resume state, and the cost counters.

    `folder` None: in-process, no signals, checkpoints or display (`local`). `identity`: plain values
    that say which evaluation this is (model, checkpoint, settings, splits); `--resume` refuses a
    checkpoint whose identity differs. `head_info`: what the head file records besides the probe."""

    def __init__(self, world: World, *, folder: Path | None = None, resume: bool = False,
                 checkpoint_minutes: float = 0.0, identity: dict | None = None, head_info: dict | None = None,
                 log: Callable[[str], None] | None = None):
        self.world = world
        self.folder = None if folder is None else Path(folder)
        self.resume = resume
        self.checkpoint_minutes = checkpoint_minutes
        self.identity: dict = dict(identity or {})
        self.head_info: dict = dict(head_info or {})
        self.log = log if world.is_main else None
        self.saved: dict | None = None
        """The checkpoint `--resume` continues from (after `running` starts), else None."""
        self.step = 0
        self.total = 0
        self.control = None
        self.monitor = None
        self.encoded = 0
        """Images that went through the encoder on this rank (this process)."""
        self.encode_seconds = 0.0
        self._started = time.perf_counter()
        self._window = (time.perf_counter(), 0)
        self._lock = None
        self._created = False

    def close(self) -> None:
        """Release the folder's lock (rank 0) and leave the process group (under torchrun)."""
        lock, self._lock = self._lock, None
        try:
            if lock is not None:
                lock.release()
                if self._created and not any(self.folder.iterdir()):
                    self.folder.rmdir()  # a run that failed before writing anything leaves no empty folder
        finally:
            if self.world.distributed:
                close_world()

    @classmethod
    def local(cls, device: torch.device | str, log: Callable[[str], None] | None = None) -> "EvalSession":
        """A single-process session without folder: no signals, checkpoints or display."""
        return cls(World(rank=0, world_size=1, local_rank=0, device=torch.device(device)), log=log)

    # ---------------------------------------------------------------- the run
    @contextlib.contextmanager
    def running(self, identity: dict, total: int, phases: dict[str, int]) -> Iterator["EvalSession"]:
        """The phases run inside: `total` steps in all (`phases`: {name: steps}, for the display). With a
        folder: reads the `--resume` checkpoint (`saved`), installs the stop handlers, shows progress.
        A stop agreed at a step ends the block and raises `RunStopped` once every rank is out of it."""
        self.identity.update(identity)
        self.total = total
        if self.folder is None:
            yield self
            return
        if self.resume:
            self._load()
        control = RunControl(checkpoint_every=EVERY_STEP, checkpoint_minutes=self.checkpoint_minutes,
                             is_main=self.world.is_main, group=control_group())
        monitor = RunMonitor(self.folder, total, self.step, enabled=self.world.is_main, label="linear-eval",
                             tensorboard=False)
        stopped = None
        with control, monitor:
            self.control, self.monitor = control, monitor
            monitor.message("linear-eval: " + ", ".join(f"{name} {steps} steps" for name, steps in phases.items()
                                                        if steps) + f" on {self.world.world_size} device(s)")
            try:
                yield self
            except _Stop as stop:
                stopped = stop
            finally:
                self.control = self.monitor = None
        if stopped is not None:
            raise RunStopped(f"{stopped.signal_name} received; finished step {self.step} of {self.total} and saved "
                             f"{stopped.path}; `relic-fast linear-eval ... --resume` continues")

    def boundary(self, state: Callable[[], dict]) -> None:
        """After a step every rank took: advance the display; on a stop signal or a wall-clock checkpoint
        (agreed by every rank) write `state()` (a collective: every rank calls it), then stop on a signal.
        The last step just ends the run."""
        self.step += 1
        if self.monitor is not None:
            self.monitor.advance(self.step)
        if self.control is None:
            return
        decision = self.control.after_step(self.step)
        if self.step >= self.total or not (decision.checkpoint or decision.stop):
            return
        path = self.save(state())
        if decision.stop:
            raise _Stop(decision.stop, path)

    def save(self, state: dict) -> Path:
        """Rank 0 writes `state` as the checkpoint of this step (only the newest is kept); its path."""
        path = checkpoint_path(self.folder, self.step)
        if self.world.is_main:
            payload = {KIND: plain(self.identity), "step": self.step, "world_size": self.world.world_size, **state}
            save_checkpoint(payload, self.folder, self.step, keep=1)
        return path

    def _load(self) -> None:
        """Read the newest checkpoint of the folder into `saved` (every rank reads it; the folder is shared),
        refusing one of another evaluation or rank count."""
        found = latest_checkpoint(self.folder, warn=lambda text: self.log and self.log(text), required=KIND)
        if not same_on_every_rank(found[0].name if found else None):
            raise ResumeMismatchError(f"--resume: the ranks found different checkpoints in {self.folder}; with "
                                      f"several nodes, --out must be a folder that every node shares")
        if found is None:
            if self.log:
                self.log(f"--resume: no checkpoint in {self.folder}, starting from scratch")
            return
        path, state = found
        saved, now = flat(state[KIND]), flat(plain(self.identity))
        changed = [f"{key} = {saved.get(key)!r} in the checkpoint, {now.get(key)!r} now"
                   for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
        if state["world_size"] != self.world.world_size:
            changed.append(f"{state['world_size']} rank(s) in the checkpoint, {self.world.world_size} now (the data "
                           f"position is saved per rank)")
        if changed:
            raise ResumeMismatchError(f"{path}: --resume cannot continue this evaluation: {'; '.join(changed)}. "
                                      f"Resume with the same settings, or start over without --resume (or in "
                                      f"another --out folder)")
        self.saved, self.step = state, int(state["step"])
        if self.log:
            self.log(f"resumed from {path} (step {self.step} of {self.total}, {state['phase']})")

    # ---------------------------------------------------------------- gathering a phase's state
    def gather_objects(self, value: Any) -> list:
        """`value` of every rank, in rank order (a collective; [value] in one process)."""
        if not self.world.distributed:
            return [value]
        values: list = [None] * self.world.world_size
        dist.all_gather_object(values, value)
        return values

    def gather_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Every rank's `rows` concatenated in rank order, and how many rows each rank gave."""
        return all_gather_rows(rows, self.world), [int(n) for n in self.gather_objects(int(rows.shape[0]))]

    def my_rows(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """This rank's part of rows gathered by `gather_rows`."""
        start = sum(counts[:self.world.rank])
        return rows[start:start + counts[self.world.rank]]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """`values` summed over ranks (a collective; a copy in one process)."""
        values = values.clone()
        if self.world.distributed:
            dist.all_reduce(values)
        return values

    # ---------------------------------------------------------------- progress and cost
    def phase(self, text: str) -> None:
        """One line above the live display (rank 0; nothing in-process)."""
        if self.monitor is not None:
            self.monitor.message(text)

    def epoch_done(self, epoch: int, epochs: int, loss: float) -> None:
        """An epoch of the probe's SGD ended (its mean loss on this rank)."""
        if self.monitor is not None:
            self.monitor.log(self.step, {"epoch": float(epoch + 1), "loss": loss})
        elif self.log is not None:
            self.log(f"linear epoch {epoch + 1}/{epochs}: loss {loss:.4f}")

    def count(self, images: int, metrics: Callable[[], dict] | None = None) -> None:
        """`images` more went through the encoder on this rank; every `LOG_SECONDS` rank 0 records the
        rate (all ranks, assuming equal shards) and `metrics()` (read only then: it may sync)."""
        self.encoded += images
        if self.monitor is None or not self.monitor.enabled:
            return
        now = time.perf_counter()
        since, seen = self._window
        seen += images
        if now - since < LOG_SECONDS[self.monitor.console.is_terminal]:
            self._window = (since, seen)
            return
        self._window = (now, 0)
        record = {"images_per_s": seen * self.world.world_size / max(now - since, 1e-9)}
        if metrics is not None:
            record.update(metrics())
        self.monitor.log(self.step, record)

    @contextlib.contextmanager
    def encoding(self) -> Iterator[None]:
        """Time spent in a phase where the encoder runs (`cost`)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.world.device)  # note: a host sync, so the encoder's queued work is timed
            self.encode_seconds += time.perf_counter() - start

    def cost(self) -> dict[str, Any]:
        """What the evaluation cost in this process (a collective): images through the encoder over all ranks,
        the seconds of the phases that ran it (rank 0's clock), and features/s per device."""
        encoded = int(self.sum(torch.tensor([self.encoded], dtype=torch.float64, device=self._reduce_device()))
                      .item())
        seconds = self.encode_seconds
        device = self.world.device
        name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)")
        return {"devices": self.world.world_size, "device": name, "encoded_images": encoded,
                "encode_seconds": round(seconds, 3),
                "features_per_s_per_device": encoded / seconds / self.world.world_size if seconds > 0 else None,
                "seconds": round(time.perf_counter() - self._started, 3)}

    def _reduce_device(self) -> torch.device:
        """Where tensors for collectives live: the device with NCCL, the CPU with gloo."""
        return self.world.device if self.world.device.type == "cuda" else torch.device("cpu")


def start_session(config, *, folder: Path, resume: bool, source: Path | None,
                  log: Callable[[str], None] | None = None) -> EvalSession:
    """The session of `relic-fast linear-eval` (one process, or one rank under torchrun): join the ranks
    (`distributed.init_world` on the run plan's device), and on rank 0 create `folder`, take its run lock
    and check it (`prepare_folder`: a fresh run deletes an earlier evaluation's checkpoints there).
    `source`: the pretraining checkpoint file evaluated (None: a random-init encoder). `close()` it."""
    from relic_fast.export import config_hash
    from relic_fast.run_plan import resolve_plan
    from relic_fast.runlock import RunLock

    world = init_world(resolve_plan(config).torch_device)
    log = log if world.is_main else None
    step = digest = None
    if source is not None:
        state = read_checkpoint(source, mmap=True)  # the tensors mapped, not read: its step and saved config
        step, digest = int(state["step"]), config_hash(state["config"])
    model = config.model
    identity = {"model": {"encoder": model.encoder, "width": model.width, "small_stem": model.small_stem},
                "checkpoint": str(Path(source).resolve()) if source is not None else None, "checkpoint_step": step,
                "random_init": source is None}
    head_info = {"encoder": identity["model"],
                 "source": {"checkpoint": str(source) if source is not None else None, "step": step,
                            "config_hash": digest, "network": "online", "random_init": source is None}}
    lock, created = None, not Path(folder).exists()
    if world.is_main:
        Path(folder).mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder).acquire()
        if lock.note and log:
            log(lock.note)
        try:
            prepare_folder(Path(folder), resume)
        except BaseException:
            lock.release()
            raise
    session = EvalSession(world, folder=folder, resume=resume, checkpoint_minutes=config.eval.checkpoint_minutes,
                          identity=identity, head_info=head_info, log=log)
    session._lock, session._created = lock, created
    return session


def prepare_folder(folder: Path, resume: bool) -> None:
    """Refuse a pretraining run's folder as `--out` (its `plan.toml`, or checkpoints that are not a linear
    evaluation's: never touched); before a fresh (not `resume`) evaluation delete an earlier one's checkpoints."""
    if (folder / "plan.toml").is_file():
        raise LinearEvalError(f"--out {folder}: that is a pretraining run's folder (its plan.toml); evaluate into a "
                              f"folder of its own, e.g. --out {folder / 'linear_eval'} (the default for --checkpoint "
                              f"{folder})")
    found = list_checkpoints(folder)
    foreign = [p for p in found if not is_eval_checkpoint(p)]
    if foreign:
        raise LinearEvalError(f"--out {folder}: its checkpoints/ holds {foreign[-1].name}, which is not a linear "
                              f"evaluation's checkpoint (a pretraining run's folder?); evaluate into a folder of its "
                              f"own, e.g. --out {folder / 'linear_eval'} (the default for --checkpoint {folder})")
    for path in found if not resume else []:
        path.unlink(missing_ok=True)
