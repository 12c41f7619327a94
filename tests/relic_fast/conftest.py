"""Shared fixtures for the trainer-side tests: a tiny demo dataset and a tiny pretraining config."""

from pathlib import Path

import pytest

from relic_fast.config import load_config

from tiny_recipe import DEMO_RECIPE, TINY_OVERRIDES


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
    return load_config(DEMO_RECIPE, TINY_OVERRIDES + [f"data.path={tiny_demo}"])
