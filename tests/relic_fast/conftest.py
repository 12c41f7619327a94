"""Shared fixtures for the trainer-side tests: a tiny demo dataset and a tiny pretraining config."""

from pathlib import Path

import pytest

from relic_fast.config import load_config

REPO = Path(__file__).resolve().parents[2]

TINY_OVERRIDES = [
    "model.encoder=resnet18", "model.small_stem=true", "model.projector_hidden=64", "model.embedding_dim=32",
    "model.predictor_hidden=64", "views.num_large=2", "views.num_small=1", "views.large_size=32",
    "views.small_size=16", "views.saliency_p=0.5", "data.device=cpu", "data.num_threads=1",
    "data.output_dtype=float32", "train.batch_size=8", "train.epochs=2", "train.device=cpu",
    "train.compile=off", "train.precision=fp32", "train.log_every=1", "train.checkpoint_every=2",
    "loss.implementation=reference", "optim.warmup_epochs=0.5",
]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 40-image, 32 px demo dataset (train/val/val_correlated + masks)."""
    from relic_fast.demo_data import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(root, images=40, size=32, seed=0, workers=1, progress=False)
    return root


@pytest.fixture()
def tiny_config(tiny_demo):
    """A CPU recipe small enough for a step in well under a second: resnet18 small-stem, 2x32 px + 1x16 px views."""
    return load_config(REPO / "configs" / "demo_cpu.toml", TINY_OVERRIDES + [f"data.path={tiny_demo}"])
