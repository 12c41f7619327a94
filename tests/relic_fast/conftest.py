"""Shared fixtures for the trainer-side tests: a tiny demo dataset and a tiny pretraining config."""

import shutil
from pathlib import Path

import pytest

from relic_fast.config import load_config

from tests.support.imagenet_kaggle import KaggleImageNet, write_imagenet_kaggle
from tests.support.tiny_recipe import BROKEN, DEMO_RECIPE, TINY_OVERRIDES


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 40-image, 32 px demo dataset (train/val/val_correlated/test + masks)."""
    from relic_fast.demo_data import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(root, images=40, size=32, seed=0, workers=1, progress=False)
    return root


@pytest.fixture()
def tiny_config(tiny_demo):
    """A CPU recipe small enough for a step in well under a second: resnet18 small-stem, 2x32 px + 1x16 px views."""
    return load_config(DEMO_RECIPE, TINY_OVERRIDES + [f"data.path={tiny_demo}"])


@pytest.fixture()
def messy_tree(tiny_demo, tmp_path):
    """The tiny demo train split (no masks) plus a truncated JPEG and a text file named .jpg in class folders."""
    root = tmp_path / "messy"
    shutil.copytree(tiny_demo / "train", root)
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    good = next(classes[0].glob("*.jpg")).read_bytes()
    (classes[0] / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (classes[1] / "notes.jpg").write_bytes(BROKEN["notes.jpg"])
    return root


@pytest.fixture()
def imagenet_kaggle(tmp_path) -> KaggleImageNet:
    """ImageNet as Kaggle ships it, in miniature (tests/support/imagenet_kaggle.py): class-folder
    train/, a flat val/ labelled by LOC_val_solution.csv at the download's root, LOC_synset_mapping.txt,
    an unlabelled flat test/; 3 wnids, 24 px JPEGs. Fresh per test (tests may damage it)."""
    return write_imagenet_kaggle(tmp_path / "imagenet")
