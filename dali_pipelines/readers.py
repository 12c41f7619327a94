"""What one rank's pipeline reads, and in which order: the reading plan (`ReadPlan`) that a dataset's format
turns into DALI readers (`read_encoded`), and the seeded, sharded sample orders behind it.

Shuffling and sharding of the formats whose samples are image files are ours, not DALI's: epoch e's order is
a permutation drawn from (seed, e), identical on every rank; rank r reads slice r of it (`rank_samples`:
DistributedSampler's contract, disjoint ranks covering the data each epoch, the same number of steps on every
rank) and DALI just reads the rank's list in order. So a run is reproducible from its seed, and the loader
always knows which files a rank reads (to name a bad one). (DALI's `shuffle_after_epoch` uses a hard-coded
seed and hides the order; `random_shuffle` is a buffer shuffle after a hidden global shuffle.) A rank's list
may hold several epochs back to back, so one pipeline serves many epochs of a small dataset. A format read in
bigger pieces (WebDataset shards) permutes those instead and lets DALI shard the samples
(`DatasetFormat.epoch_items`, `chunkable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from dali_pipelines.formats.base import DatasetSpec

READER_NAME = "reader"
"""Name of the image reader: the DALI iterator's `reader_name` (epoch size, padding)."""


@dataclass(frozen=True)
class ReadPlan:
    """What one pipeline reads: for a chunkable format the rank's sample indices in read order (DALI shard 0
    of 1); otherwise the epoch's order of the format's items (WebDataset: shards), sharded by DALI."""

    dataset: DatasetSpec
    samples: np.ndarray
    """Sample indices to read in order, or item indices (`DatasetFormat.epoch_items`)."""
    shard_id: int = 0
    num_shards: int = 1
    reader_seed: int = 0
    """Seed of a reader's shuffle buffer (WebDataset)."""
    shuffle: bool = False
    masks: bool = False
    """Read the saliency masks (where the dataset has them: `DatasetFormat.can_read_masks`)."""


class Encoded(NamedTuple):
    """The reader outputs inside a pipeline: encoded image bytes, int32 label of shape (1,), and the
    encoded mask bytes with a scalar bool `has_mask` (both None when masks are not read)."""

    images: object
    labels: object
    mask_bytes: object | None
    has_mask: object | None


def epoch_order(num_items: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's permutation of `num_items` (`DatasetFormat.epoch_items`): seeded by (seed, epoch)."""
    if not shuffle:
        return np.arange(num_items)
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def shard_bounds(num_samples: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """[start, end) of rank `shard_id`'s slice: DALI's reader arithmetic, floor(id * n / shards)."""
    return num_samples * shard_id // num_shards, num_samples * (shard_id + 1) // num_shards


def steps_per_epoch(num_samples: int, num_shards: int, batch_size: int, drop_last: bool) -> int:
    """Steps every rank takes per epoch: the smallest slice's full batches (drop_last), else enough
    batches for the largest slice (smaller ones padded)."""
    smallest, largest = num_samples // num_shards, -(-num_samples // num_shards)
    return smallest // batch_size if drop_last else -(-largest // batch_size)


def rank_samples(num_samples: int, *, seed: int, epoch: int, shuffle: bool, shard_id: int, num_shards: int,
                 batch_size: int, drop_last: bool) -> np.ndarray:
    """Sample indices rank `shard_id` reads in `epoch`: its slice of the epoch's order, cut to whole
    batches (drop_last) or padded by repeating its last sample, `steps_per_epoch * batch_size` long."""
    order = epoch_order(num_samples, seed=seed, epoch=epoch, shuffle=shuffle)
    start, end = shard_bounds(num_samples, shard_id, num_shards)
    count = steps_per_epoch(num_samples, num_shards, batch_size, drop_last) * batch_size
    mine = order[start:end][:count]
    return np.concatenate([mine, np.full(count - len(mine), mine[-1])]) if len(mine) < count else mine


def sharding(plan: ReadPlan, name: str) -> dict:
    """Reader arguments shared by every reader of a plan (same slice, last sample repeated to pad)."""
    return dict(shard_id=plan.shard_id, num_shards=plan.num_shards, stick_to_shard=True,
                pad_last_batch=True, name=name)


def read_encoded(plan: ReadPlan, name: str = READER_NAME) -> Encoded:
    """The readers of `plan` inside a pipeline definition: its dataset's format builds them."""
    return plan.dataset.format.read_encoded(plan, name)
