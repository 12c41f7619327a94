"""The torch-facing loaders: epochs and length, exact resume from `checkpoint()`, bad files named, the eval
loader's contract, and the GPU graph built from the same definition."""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch
from PIL import Image

from dali_pipelines.dataset import resolve_dataset
from dali_pipelines.loader import BadImageError, build_eval_loader, build_pretrain_loader
from dali_pipelines.pretrain import graph_operators, multi_view_pipeline, operator_counts
from dali_pipelines.readers import ReadPlan
from dali_pipelines.recipe import DataConfig, ViewsConfig

VIEWS = ViewsConfig(num_large=2, num_small=1, large_size=16, small_size=8, saliency_p=0.5)
"""Every augmentation on, saliency included: the conditionals and all random streams are exercised."""


def build(path, checkpoint=None, **kwargs):
    data = DataConfig(num_threads=2, **kwargs.pop("data", {}))
    return build_pretrain_loader(resolve_dataset(str(path)), VIEWS, data, batch_size=4, seed=9,
                                 checkpoint=checkpoint, **kwargs)


def take(loader, count: int) -> list:
    """`count` batches across epochs (a new `iter()` per epoch, as the trainer does)."""
    out = []
    while len(out) < count:
        out += [b for _, b in zip(range(count - len(out)), loader)]
    return out


def assert_same(first: list, second: list) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.large, b.large) and torch.equal(a.small, b.small)


def test_epochs_have_len_batches_and_restart(identity_data):
    loader = build(identity_data.folder)
    assert len(loader) == identity_data.count // 4
    first, second = list(loader), list(loader)
    assert len(first) == len(second) == len(loader)
    assert sorted(int(x) for b in first for x in b.labels) == sorted(int(x) for b in second for x in b.labels)
    assert loader.epoch == 2


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_resume_gives_identical_next_batches(identity_data, layout):
    """Checkpoint mid-epoch (and at an epoch's end): a loader built from it continues bit-identically."""
    path = getattr(identity_data, layout)
    loader = build(path)
    steps = len(loader)
    take(loader, steps + 2)                      # one epoch and two steps
    middle = loader.checkpoint()
    expected = take(loader, steps + 1)           # crosses into the next epoch
    assert_same(take(build(path, checkpoint=middle), steps + 1), expected)
    take(loader, steps - 3)                      # to the end of that epoch
    end = loader.checkpoint()
    assert (json.loads(end)["epoch"], json.loads(end)["step"]) == (3, 0)
    assert_same(take(build(path, checkpoint=end), 3), take(loader, 3))


def test_checkpoint_of_other_settings_is_refused(identity_data):
    state = build(identity_data.folder).checkpoint()
    with pytest.raises(ValueError, match="other settings"):
        build_pretrain_loader(resolve_dataset(str(identity_data.folder)), VIEWS, DataConfig(num_threads=2),
                              batch_size=2, seed=9, checkpoint=state)


def test_a_bad_file_is_named(tmp_path, identity_data):
    """A corrupt and a truncated image: DALI stops; the error names them and says what to run."""
    root = tmp_path / "data"
    (root / "cls").mkdir(parents=True)
    for i in range(6):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(root / "cls" / f"{i}.jpg")
    (root / "cls" / "7_garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    good = (root / "cls" / "0.jpg").read_bytes()
    (root / "cls" / "8_truncated.jpg").write_bytes(good[:len(good) // 2])
    with pytest.raises(BadImageError) as caught:
        take(build(root, data={"shuffle": False}), 4)
    message = str(caught.value)
    assert "7_garbage.jpg" in message and "relic-fast index" in message
    assert isinstance(caught.value, RuntimeError)


def test_eval_loader_contract(indexed_data):
    """Every sample once per epoch, dataset order, last batch partial, channels-last float32; two ranks
    split the data."""
    dataset = resolve_dataset(str(indexed_data.file_list))
    data = DataConfig(num_threads=1)
    loader = build_eval_loader(dataset, image_size=12, batch_size=8, train=False, data=data)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [8, 8, 8, 2] and len(loader) == 4
    assert torch.cat([b[1] for b in batches]).tolist() == dataset.labels
    images = batches[0][0]
    assert images.shape == (8, 3, 12, 12) and images.dtype == torch.float32
    assert images.is_contiguous(memory_format=torch.channels_last)
    parts = [torch.cat([b[1] for b in build_eval_loader(dataset, image_size=12, batch_size=8, train=True, data=data,
                                                         shard_id=r, num_shards=2)]).tolist() for r in range(2)]
    assert sorted(parts[0] + parts[1]) == list(range(indexed_data.count))


def test_gpu_graph_is_the_same_definition_on_the_gpu(identity_data):
    """Constructed (not built: no GPU here) for device 0: the nvJPEG `mixed` decoder, every image operator
    on the GPU, the readers, random draws and crop windows on the CPU."""
    dataset = resolve_dataset(str(identity_data.folder))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=True)
    views = ViewsConfig(num_large=2, num_small=1, large_size=24, small_size=8, saliency_p=0.5)
    pipe = multi_view_pipeline(plan, views, "gpu", False, batch_size=2, num_threads=1, device_id=0)
    outputs = pipe._graph_out  # the graph's outputs, kept by DALI until build
    assert [o.device for o in outputs] == ["gpu", "gpu", "gpu", "cpu"]
    ops = set(graph_operators(pipe))
    assert ("Image", "mixed") in ops                     # images decoded by nvJPEG
    for kind in ("Resize", "CoordTransform", "GaussianBlur", "LookupTable"):
        assert (kind, "gpu") in ops and (kind, "cpu") not in ops, kind
    assert not any(kind == "CropMirrorNormalize" for kind, _ in ops)  # uint8 out: the trainer normalizes
    assert ("Image", "cpu") in ops                       # saliency masks: small PNGs, decoded on the CPU
    assert {("reader", "cpu"), ("Uniform", "cpu"), ("PeekImageShape", "cpu")} <= ops


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_config_decides_which_operators_the_graph_holds(identity_data, device):
    """A probability of 0 leaves its operator out of the graph, 1 puts it in without a per-sample
    conditional, and so does a one-tap blur (views under 20 px); a conditional only where it skips enough
    pixel work (CPU views from the unit's size up); saliency without masks builds no mask decoder."""
    dataset = resolve_dataset(str(identity_data.folder))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=False)
    blur_op = "GaussianBlur" if device == "gpu" else "Filter"

    def kinds(large_size: int = 96, **changes) -> list[str]:
        views = ViewsConfig(num_large=2, num_small=1, large_size=large_size, small_size=8, **changes)
        pipe = multi_view_pipeline(plan, views, device, False, batch_size=2, num_threads=1,
                                   device_id=0 if device == "gpu" else None)
        return [kind for kind, _ in graph_operators(pipe)]

    def blurs(graph: list[str]) -> int:
        """The blur's filter operators."""
        return graph.count(blur_op)

    none = kinds(blur_p=(0.0,), solarize_p=(0.0,), saliency_p=0.5)
    assert blurs(none) == 0 and "LookupTable" not in none
    assert none.count("Image") == 1                       # the images' decoder only: no masks to decode
    assert blurs(kinds(large_size=16, blur_p=(1.0,), solarize_p=(0.0,))) == 0   # a one-tap kernel everywhere
    always = kinds(blur_p=(1.0,), solarize_p=(0.0,))
    sometimes = kinds(blur_p=(0.5,), solarize_p=(0.0,))
    assert blurs(always) == blurs(sometimes) == (2 if device == "gpu" else 4)   # the two large views, not 8 px
    small_always = kinds(large_size=32, blur_p=(1.0,), solarize_p=(0.0,))
    small_sometimes = kinds(large_size=32, blur_p=(0.5,), solarize_p=(0.0,))
    assert small_always.count("Split") == small_sometimes.count("Split")  # 32 px: filtered, one tap where undrawn
    if device == "cpu":
        assert always.count("Split") < sometimes.count("Split")   # 96 px: a conditional skips the blur's work
    else:
        assert always.count("Split") == sometimes.count("Split")  # GPU: every view blurred, one tap where not drawn
    assert "LookupTable" in kinds(solarize_p=(0.3,))
    bare = kinds(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,), solarize_p=(0.0,), saliency_p=0.0)
    assert bare.count("Uniform") == 1 and "CoordTransform" not in bare                           # crops only,
    assert bare.count("Merge") == bare.count("NumbaFunction") == (device == "cpu")  # and the CPU's shrink of large
                                                                  # photos: one conditional, its kernel


OPERATOR_BUDGET = {"cpu": 250, "gpu": 200}
"""Operators of the default graph (4 large + 2 small views at 224/96, saliency 0.1, masks read): the host cost
per image grows with them (docs/performance.md), so a change that adds some shows here first."""


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_the_default_graph_keeps_its_operator_budget(identity_data, device):
    """One random operator per image; the GPU graph has conditionals only where they skip host work (the mask
    decode, the solarize lookup table); both stay within their budgets."""
    dataset = resolve_dataset(str(identity_data.folder))
    plan = ReadPlan(dataset, np.arange(dataset.num_samples), masks=True)
    counts = operator_counts(plan, ViewsConfig(saliency_p=0.1), device)
    assert counts["Uniform"] == 1
    assert sum(counts.values()) <= OPERATOR_BUDGET[device], counts
    if device == "gpu":
        assert counts["Split"] <= 5 and counts["Merge"] <= 4, counts
