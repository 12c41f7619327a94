"""Datasets and readers: resolving the three layouts, the same samples from each, disjoint covering shards,
seeded reproducible orders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dali_pipelines.dataset import DatasetError, mask_file, resolve_dataset
from dali_pipelines.loader import build_pretrain_loader
from dali_pipelines.readers import rank_samples, steps_per_epoch
from dali_pipelines.recipe import DataConfig, ViewsConfig

from tests.support.pipeline_data import CLASSES, SIDE, has_mask

TINY = ViewsConfig(num_large=1, num_small=0, large_size=8, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,),
                   solarize_p=(0.0,), saliency_p=0.0)


def test_resolve_the_three_layouts(identity_data):
    folder = resolve_dataset(str(identity_data.folder))
    listed = resolve_dataset(str(identity_data.file_list))
    shards = resolve_dataset(str(identity_data.shards))
    demo_root = resolve_dataset(str(identity_data.folder.parent))  # a root holding train/
    assert (folder.format.name, listed.format.name, shards.format.name) == ("folder", "file_list", "webdataset")
    assert folder.class_names == list(CLASSES) and folder.num_samples == identity_data.count
    assert folder.files == listed.files and folder.labels == listed.labels == shards.labels
    assert folder.mask_root == listed.mask_root == identity_data.masks  # <root>/../masks/<split>
    assert demo_root.root == folder.root and demo_root.mask_root == folder.mask_root
    assert len(shards.tar_paths) == 2 and shards.files == [] and shards.num_samples == identity_data.count
    present = [mask_file(folder.mask_root, f).is_file() for f in folder.files]
    assert present == [has_mask(int(Path(f).stem)) for f in folder.files]


def test_resolve_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_dataset(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        resolve_dataset(str(tmp_path / "empty"))
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1\nno_label_here\n")
    with pytest.raises(DatasetError, match="bad.txt:2"):
        resolve_dataset(str(bad))


def epoch_batches(path, views=TINY, *, batch_size=4, seed=0, epochs=1, shard_id=0, num_shards=1, **data):
    """All batches of `epochs` epochs of a CPU loader."""
    loader = build_pretrain_loader(resolve_dataset(str(path)), views, DataConfig(num_threads=2, **data),
                                   batch_size=batch_size, seed=seed, shard_id=shard_id, num_shards=num_shards)
    return [list(loader) for _ in range(epochs)], len(loader)


def test_the_three_formats_give_the_same_samples(identity_data):
    """Unshuffled, identity crops with saliency blending on (masks from the tree and from the tars):
    identical batches. (Random augmentations are left out: their streams depend on the graph.)"""
    views = ViewsConfig(num_large=2, num_small=1, large_size=SIDE, small_size=SIDE, large_area=(1.0, 1.0),
                        small_area=(1.0, 1.0), aspect_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0,
                        blur_p=(0.0,), solarize_p=(0.0,), saliency_p=1.0)
    results = [epoch_batches(p, views, batch_size=6, shuffle=False)[0][0]
               for p in (identity_data.folder, identity_data.file_list, identity_data.shards)]
    folder = results[0]
    assert len(folder) == identity_data.count // 6
    for other in results[1:]:
        assert len(other) == len(folder)
        for a, b in zip(folder, other):
            assert torch.equal(a.labels, b.labels)
            assert torch.equal(a.large, b.large) and torch.equal(a.small, b.small)


def labels_of(batches) -> list[int]:
    return [int(x) for batch in batches for x in batch.labels]


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_samples_are_disjoint_and_cover_each_epoch(drop_last):
    count, ranks, batch = 26, 3, 4
    steps = steps_per_epoch(count, ranks, batch, drop_last)
    for epoch in range(3):
        parts = [rank_samples(count, seed=7, epoch=epoch, shuffle=True, shard_id=r, num_shards=ranks,
                              batch_size=batch, drop_last=drop_last) for r in range(ranks)]
        assert all(len(p) == steps * batch for p in parts)  # same number of steps on every rank
        unique = [set(p.tolist()) for p in parts]
        assert all(not (unique[a] & unique[b]) for a in range(ranks) for b in range(a + 1, ranks))
        covered = set().union(*unique)
        assert covered == set(range(count)) if not drop_last else len(covered) == ranks * steps * batch
    first = rank_samples(count, seed=7, epoch=0, shuffle=True, shard_id=0, num_shards=ranks, batch_size=batch,
                         drop_last=drop_last)
    second = rank_samples(count, seed=7, epoch=1, shuffle=True, shard_id=0, num_shards=ranks, batch_size=batch,
                          drop_last=drop_last)
    assert not np.array_equal(first, second)  # a new order every epoch


@pytest.mark.parametrize("layout", ["file_list", "shards"])
def test_loader_shards_are_disjoint_and_cover(indexed_data, layout):
    """Labels are sample indices: each epoch the ranks' samples are disjoint and cover the data."""
    path = getattr(indexed_data, layout)
    ranks = 2
    per_rank = [epoch_batches(path, seed=3, epochs=2, shard_id=r, num_shards=ranks, drop_last=False)
                for r in range(ranks)]
    assert len({length for _, length in per_rank}) == 1  # same len() on every rank
    for epoch in range(2):
        seen = [set(labels_of(batches[epoch])) for batches, _ in per_rank]
        assert not (seen[0] & seen[1])
        assert seen[0] | seen[1] == set(range(indexed_data.count))
    if layout == "file_list":  # our own order: a fresh permutation each epoch
        assert labels_of(per_rank[0][0][0]) != labels_of(per_rank[0][0][1])


def test_same_seed_same_batches_other_seed_other_batches(indexed_data):
    views = ViewsConfig(num_large=2, num_small=1, large_size=16, small_size=8)
    first, _ = epoch_batches(indexed_data.file_list, views, seed=11, epochs=2)
    again, _ = epoch_batches(indexed_data.file_list, views, seed=11, epochs=2)
    other, _ = epoch_batches(indexed_data.file_list, views, seed=12, epochs=1)
    for a, b in zip(sum(first, []), sum(again, [])):
        assert torch.equal(a.labels, b.labels) and torch.equal(a.large, b.large) and torch.equal(a.small, b.small)
    assert labels_of(first[0]) != labels_of(other[0])
    assert not torch.equal(first[0][0].large, other[0][0].large)
