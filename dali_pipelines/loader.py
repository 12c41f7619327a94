"""Torch-facing loaders over the DALI pipelines: `build_pretrain_loader` (multi-view `ViewBatch`es) and `build_eval_loader`.

A `DALIGenericIterator` runs each pipeline. For a chunkable format (image files: folder, file list,
flat folder) a pipeline reads a rank's seeded sample lists of several consecutive epochs back to back
(`readers.rank_samples`; at least `chunk_samples` samples, so a small dataset does not rebuild a
pipeline every epoch); other formats (WebDataset) and the eval loader build one pipeline per epoch. A
new `iter()` starts the next epoch, or finishes the current one when it was left part-way. Views come
out of DALI as HWC and are packed VIEW-MAJOR into one (V*B, H, W, 3) tensor whose NCHW permutation is
channels-last with no layout copy (the one copy packs the V per-view outputs; DALI's dynamic executor
hands them over without copying).
`checkpoint()` is (epoch, step, DALI checkpoint: reader positions and every random generator): a
loader built from it yields the identical next batches. A DALI error during iteration becomes a
`BadImageError` naming the unreadable file(s), found by validating this rank's files of the epoch
with PIL (`image_check.validate_image`), starting with the batches in flight.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dali_pipelines.batch import ViewBatch
from dali_pipelines.dataset import DatasetSpec
from dali_pipelines.evaluation import EVAL_OUTPUTS, eval_pipeline
from dali_pipelines.pretrain import multi_view_pipeline, output_names
from dali_pipelines.readers import READER_NAME, ReadPlan, epoch_order, rank_samples, shard_bounds, steps_per_epoch
from dali_pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, DataConfig, ViewsConfig
from dali_pipelines.image_check import validate_image

CHECKPOINT_FORMAT = "relic-fast-loader/1"


class BadImageError(RuntimeError):
    """An image (or saliency mask) that DALI cannot decode stopped the pipeline; the message names it."""


def pipeline_seed(seed: int, epoch: int, shard_id: int) -> int:
    """The DALI seed of one (run seed, epoch, rank): fresh draws every epoch, different per rank."""
    return int(np.random.SeedSequence([seed, epoch, shard_id]).generate_state(1)[0] & 0x7FFFFFFF)


def _check_source(source: str) -> str | None:
    """Why `source` (a path, or `shard.tar:member`) is not a decodable image, or None."""
    path, _, member = source.partition(".tar:")
    if not member:
        return validate_image(source)
    import tarfile

    with tarfile.open(path + ".tar") as tar, tempfile.NamedTemporaryFile(suffix=Path(member).suffix) as tmp:
        tmp.write(tar.extractfile(member).read())
        tmp.flush()
        return validate_image(tmp.name)


def find_bad_sources(sources: list[str], message: str, first_window: int) -> list[tuple[str, str]]:
    """(source, reason) of the unreadable `sources`: those named in DALI's `message` first, then the
    next `first_window` (the batches in flight), then the rest."""
    named = [s for s in sources if s in message]
    for group in (named, sources[:first_window], sources[first_window:]):
        bad = [(s, r) for s in group if (r := _check_source(s)) is not None]
        if bad:
            return bad
    return []


class _EpochLoader:
    """Epochs of batches from DALI pipelines over seeded per-rank orders; shared by both loaders.

    A chunkable format (`DatasetFormat.chunkable`): each pipeline reads a "chunk" of `chunk_epochs`
    consecutive epochs of this rank's samples back to back (whole batches each, see
    `readers.rank_samples`), so a small dataset does not rebuild a pipeline (and waste its prefetched
    batches) every epoch. Other formats and the eval loader: one pipeline per epoch, DALI sharding and
    last-batch policy."""

    output_map: list[str]
    chunk_samples = 16384
    """A pipeline reads at least this many samples (whole epochs) before the next one is built."""

    def __init__(self, dataset: DatasetSpec, data: DataConfig, *, batch_size: int, seed: int, shard_id: int,
                 num_shards: int, device_id: int | None, shuffle: bool, drop_last: bool, chunked: bool,
                 masks: bool, checkpoint: str | None = None, start_step: int = 0):
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} outside [0, {num_shards})")
        self.dataset, self.data = dataset, data
        self.batch_size, self.seed, self.shard_id, self.num_shards = batch_size, seed, shard_id, num_shards
        self.device_id, self.shuffle, self.drop_last = device_id, shuffle, drop_last
        self._masks = masks
        self._chunked = chunked and dataset.format.chunkable
        if self._chunked:
            self._steps = steps_per_epoch(dataset.num_samples, num_shards, batch_size, drop_last)
            if self._steps == 0:
                raise ValueError(f"{dataset.num_samples} samples over {num_shards} rank(s) do not fill one "
                                 f"batch of {batch_size} per rank (drop_last)")
            self._chunk_epochs = max(1, -(-self.chunk_samples // (self._steps * batch_size)))
        else:
            self._chunk_epochs = 1
        self._epoch = self._step = self._chunk_start = 0
        state = None
        if checkpoint:
            state = self._restore(checkpoint)
        elif start_step:
            self._start_at(start_step)
        self._iterator = self._open(self._chunk_start, state)
        if not self._chunked:
            self._steps = len(self._iterator)

    def _start_at(self, start_step: int) -> None:
        """Position a loader without a saved state after `start_step` steps: a fresh pipeline over the order of
        the epoch that step falls in, its first batches counted as done (a resume whose data or data order
        changed on purpose goes on like this: the saved position belongs to the old order)."""
        if not self._chunked:  # one pipeline per epoch: DALI's reader knows the steps per epoch
            self._steps = len(self._open(0, None))
        self._epoch, self._step = divmod(start_step, self._steps)
        self._chunk_start = self._epoch

    @property
    def device(self) -> str:
        return "cpu" if self.device_id is None else "gpu"

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to (0-based)."""
        return self._epoch + (1 if self._step >= self._steps else 0)

    def _samples(self, epoch: int) -> np.ndarray:
        return rank_samples(self.dataset.num_samples, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                            shard_id=self.shard_id, num_shards=self.num_shards, batch_size=self.batch_size,
                            drop_last=self.drop_last)

    def plan(self, first_epoch: int) -> ReadPlan:
        """What the pipeline starting at `first_epoch` reads."""
        seed = pipeline_seed(self.seed, first_epoch, self.shard_id)
        if self._chunked:
            samples = np.concatenate([self._samples(e) for e in range(first_epoch, first_epoch + self._chunk_epochs)])
            return ReadPlan(self.dataset, samples, 0, 1, seed, False, self._masks)
        order = epoch_order(self.dataset.format.epoch_items(self.dataset), seed=self.seed, epoch=first_epoch,
                            shuffle=self.shuffle)
        return ReadPlan(self.dataset, order, self.shard_id, self.num_shards, seed, self.shuffle, self._masks)

    def _pipeline(self, plan: ReadPlan, seed: int, checkpoint: bytes | None):
        raise NotImplementedError

    def _convert(self, outputs: dict):
        raise NotImplementedError

    def _policy(self) -> LastBatchPolicy:
        return LastBatchPolicy.DROP if self.drop_last else LastBatchPolicy.FILL

    def _open(self, first_epoch: int, checkpoint: bytes | None) -> DALIGenericIterator:
        """The DALI iterator of the pipeline starting at `first_epoch` (restored from `checkpoint`)."""
        self._chunk_start, self._plan = first_epoch, self.plan(first_epoch)
        pipe = self._pipeline(self._plan, self._plan.reader_seed, checkpoint)
        try:
            return DALIGenericIterator([pipe], self.output_map, reader_name=READER_NAME,
                                       last_batch_policy=self._policy())
        except RuntimeError as error:  # the first batch is prepared here
            raise self._explain(error) from error

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        return self._steps

    def __iter__(self) -> Iterator:
        """The rest of the current epoch if it was left part-way, else the next epoch."""
        if self._step >= self._steps:
            self._epoch, self._step = self._epoch + 1, 0
            if self._epoch >= self._chunk_start + self._chunk_epochs:
                self._iterator = None  # free the old pipeline's threads and buffers first
                self._iterator = self._open(self._epoch, None)
        return self._batches()

    def _batches(self):
        while self._step < self._steps:
            try:
                outputs = next(self._iterator)[0]
            except StopIteration:  # never expected: the step count matches the reader's epoch
                self._step = self._steps
                return
            except RuntimeError as error:
                raise self._explain(error) from error
            self._step += 1
            yield self._convert(outputs)

    def _explain(self, error: RuntimeError) -> RuntimeError:
        """A `BadImageError` naming the unreadable files of this rank's epoch, else `error` itself."""
        samples = self._samples(self._epoch) if self._chunked else \
            self._plan.samples[slice(*shard_bounds(len(self._plan.samples), self.shard_id, self.num_shards))]
        first = self._step * self.batch_size
        sources = self.dataset.format.sources(self._plan, np.concatenate([samples[first:], samples[:first]]))
        window = (self.data.prefetch_queue_depth + 2) * self.batch_size * 2
        bad = find_bad_sources(sources, str(error), window)
        if not bad:
            return error
        lines = "\n".join(f"  {source}: {reason}" for source, reason in bad)
        return BadImageError(
            f"{len(bad)} unreadable image file(s) stopped the DALI pipeline (rank {self.shard_id}, "
            f"epoch {self._epoch}):\n{lines}\nDALI cannot skip a sample. Run `relic-fast index "
            f"{self.dataset.root}` to validate the dataset and train on its clean list "
            f"(or set data.on_bad_file = \"skip\"); a run with checkpoints then resumes with "
            f"`--resume --accept-change dataset`, its data order restarting at the current epoch.")

    def _fingerprint(self) -> dict:
        return {"samples": self.dataset.num_samples, "batch_size": self.batch_size, "seed": self.seed,
                "shard_id": self.shard_id, "num_shards": self.num_shards, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def checkpoint(self) -> str:
        """The exact position (epoch, step, DALI state) as a string; pass it as `checkpoint=`."""
        epoch, step, state = self._epoch, self._step, None
        if step >= self._steps:
            epoch, step = epoch + 1, 0
        chunk_start, chunk_epochs = self._chunk_start, self._chunk_epochs
        if epoch >= chunk_start + chunk_epochs:
            chunk_start = epoch  # a fresh pipeline starts there: nothing to restore
        elif (epoch, step) != (chunk_start, 0):
            raw = self._iterator.checkpoints()[0]
            state = base64.b64encode(raw if isinstance(raw, bytes) else raw.encode()).decode("ascii")
        return json.dumps({"format": CHECKPOINT_FORMAT, "epoch": epoch, "step": step, "chunk_start": chunk_start,
                           "chunk_epochs": chunk_epochs, "dali": state, "fingerprint": self._fingerprint()})

    def _restore(self, checkpoint: str) -> bytes | None:
        """Set the position from a `checkpoint()` string; returns the DALI state to build with."""
        saved = json.loads(checkpoint)
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a relic-fast loader checkpoint (format {saved.get('format')!r})")
        now = self._fingerprint()
        if saved["fingerprint"] != now:
            diff = {k: (v, now.get(k)) for k, v in saved["fingerprint"].items() if now.get(k) != v}
            raise ValueError(f"the loader checkpoint was taken with other settings (saved, now): {diff}")
        self._epoch, self._step, self._chunk_start = saved["epoch"], saved["step"], saved["chunk_start"]
        if self._chunked:
            self._chunk_epochs = saved["chunk_epochs"]
        return base64.b64decode(saved["dali"]) if saved["dali"] else None


class PretrainLoader(_EpochLoader):
    """Multi-view pretraining loader: iterating yields one epoch of `ViewBatch`es."""

    def __init__(self, dataset: DatasetSpec, views: ViewsConfig, data: DataConfig, *, debug: bool = False,
                 **kwargs):
        self.views, self.debug = views, debug
        self.output_map = output_names(views, debug)
        use_masks = dataset.format.can_read_masks(dataset) and views.saliency_p > 0
        super().__init__(dataset, data, shuffle=data.shuffle, drop_last=data.drop_last, chunked=True,
                         masks=use_masks, **kwargs)

    def _pipeline(self, plan: ReadPlan, seed: int, checkpoint: bytes | None):
        return multi_view_pipeline(plan, self.views, self.device, self.debug,
                                   batch_size=self.batch_size, num_threads=self.data.num_threads,
                                   device_id=self.device_id, seed=seed,
                                   prefetch_queue_depth=self.data.prefetch_queue_depth, checkpoint=checkpoint,
                                   exec_dynamic=True)

    def _fingerprint(self) -> dict:
        return {**super()._fingerprint(), "views": json.loads(json.dumps(dataclasses.asdict(self.views)))}

    def _pack(self, outputs: dict, prefix: str, count: int) -> torch.Tensor | None:
        """Concatenate views view-major, then NCHW view of the NHWC storage (channels-last)."""
        if count == 0:
            return None
        parts = [outputs[f"{prefix}{k}"] for k in range(count)]
        if count > 1 and not parts[0].is_cuda:  # one-thread copy: torch.cat's OpenMP threads spin for ms after each
            packed = torch.from_numpy(np.concatenate([part.numpy() for part in parts]))  # call, on DALI's cores
        else:
            packed = torch.cat(parts) if count > 1 else parts[0]
        return packed.permute(0, 3, 1, 2)

    def _convert(self, outputs: dict) -> ViewBatch:
        return ViewBatch(large=self._pack(outputs, "large", self.views.num_large),
                         small=self._pack(outputs, "small", self.views.num_small),
                         labels=outputs["labels"].reshape(-1).to(torch.int64),
                         normalized=False,
                         stats=outputs.get("stats"))


class EvalLoader(_EpochLoader):
    """Linear-eval loader: yields (images (B, 3, S, S) channels-last float32 normalized, labels (B,)),
    every sample once per epoch, the last batch partial; in dataset order for evaluation (`train=False`),
    in a seeded fresh order each epoch for training the probe (`train=True`: SGD must not see one class
    at a time)."""

    output_map = EVAL_OUTPUTS

    def __init__(self, dataset: DatasetSpec, data: DataConfig, *, image_size: int, train: bool,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        self.image_size, self.train, self.mean, self.std = image_size, train, tuple(mean), tuple(std)
        super().__init__(dataset, data, shuffle=train, drop_last=False, chunked=False, masks=False, **kwargs)

    def _policy(self) -> LastBatchPolicy:
        return LastBatchPolicy.PARTIAL

    def _pipeline(self, plan: ReadPlan, seed: int, checkpoint: bytes | None):
        return eval_pipeline(plan, self.image_size, self.train, self.device, self.mean, self.std,
                             batch_size=self.batch_size, num_threads=self.data.num_threads,
                             device_id=self.device_id, seed=seed,
                             prefetch_queue_depth=self.data.prefetch_queue_depth,
                             enable_checkpointing=True, checkpoint=checkpoint)

    def _convert(self, outputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs["images"].permute(0, 3, 1, 2), outputs["labels"].reshape(-1).to(torch.int64)


def build_pretrain_loader(dataset: DatasetSpec, views: ViewsConfig, data: DataConfig, *, batch_size: int,
                          seed: int, shard_id: int = 0, num_shards: int = 1, device_id: int | None = None,
                          checkpoint: str | None = None, start_step: int = 0, debug: bool = False) -> PretrainLoader:
    """The pretraining loader of one rank (`batch_size` per rank). `device_id=None`: CPU pipeline;
    an int: GPU pipeline (mixed decoder) on that device. `checkpoint`: a `loader.checkpoint()` string
    to continue from; else `start_step`: begin as if that many steps were done, at the start of the order of
    the epoch it falls in (no saved position). `debug=True` adds per-view crop windows and decisions
    (`ViewBatch.stats`)."""
    return PretrainLoader(dataset, views, data, debug=debug, batch_size=batch_size, seed=seed,
                          shard_id=shard_id, num_shards=num_shards, device_id=device_id, checkpoint=checkpoint,
                          start_step=start_step)


def build_eval_loader(dataset: DatasetSpec, *, image_size: int, batch_size: int, train: bool, data: DataConfig,
                      seed: int = 0, shard_id: int = 0, num_shards: int = 1, device_id: int | None = None,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, checkpoint: str | None = None) -> EvalLoader:
    """The linear-eval loader (`train=True`: random-resized-crop + flip; else resize + centre crop).
    `checkpoint`: a `loader.checkpoint()` string to continue from (the same next batches, crops included)."""
    return EvalLoader(dataset, data, image_size=image_size, train=train, mean=mean, std=std,
                      batch_size=batch_size, seed=seed, shard_id=shard_id, num_shards=num_shards,
                      device_id=device_id, checkpoint=checkpoint)
