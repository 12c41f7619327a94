"""The experiment as evidence: a held-out test split, ablation rows that each change one thing, a supervised
reference on the recipe's views, rows that survive an interrupted run, and a table that says n=1."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from relic_fast.config import load_config
from relic_fast.demo_data import BACKGROUND_FAMILIES, CLASS_NAMES, plan_split

TINY = ["model.encoder=resnet18", "model.small_stem=true", "model.projector_hidden=16", "model.embedding_dim=8",
        "model.predictor_hidden=16", "views.large_size=16", "views.saliency_p=0", "train.batch_size=8",
        "train.device=cpu", "data.device=cpu", "data.num_threads=1", "eval.image_size=16",
        "eval.linear_mode=logistic", "eval.linear_l2_grid=[0.01]"]


# ---------------------------------------------------------------- the test split

def pixels(root, split):
    """{relative path: decoded RGB array} of a split."""
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
            for p in sorted((root / split).rglob("*.jpg"))}


def test_test_split_is_its_own_images_disjoint_from_train_and_val(tiny_demo):
    test, others = pixels(tiny_demo, "test"), {**pixels(tiny_demo, "train"), **pixels(tiny_demo, "val")}
    assert len(test) == 10 and sorted({path.split("/")[1] for path in test}) == list(CLASS_NAMES)
    for path, image in test.items():
        closest = min(np.abs(image - other).mean() for other in others.values())
        assert closest > 10, path  # not a copy (nor a re-encoding) of any train or val image
    summary = json.loads((tiny_demo / "dataset.json").read_text())
    assert summary["splits"]["test"]["background_rule"] == "uniform"


def test_test_split_backgrounds_carry_no_class_information():
    labels, backgrounds = plan_split("test", 1000, seed=0, correlation=0.7)
    assert abs(np.mean(backgrounds == labels) - 0.1) < 0.02  # chance: as in val, unlike train's 0.7
    for c in range(len(CLASS_NAMES)):
        counts = Counter(backgrounds[labels == c].tolist())
        assert set(counts) == set(range(len(BACKGROUND_FAMILIES))) and np.ptp(list(counts.values())) <= 1
    val_labels, val_backgrounds = plan_split("val", 1000, seed=0, correlation=0.7)
    assert not np.array_equal(backgrounds, val_backgrounds)  # its own draw, not val's


def test_the_test_split_leaves_the_other_splits_bytes_alone(tmp_path):
    """A split added last keeps the RNG streams of train/val/val_correlated: the golden loss curve holds."""
    from relic_fast.demo_data import SPLITS, render_sample

    assert SPLITS[-1] == "test" and SPLITS[:3] == ("train", "val", "val_correlated")
    image, _ = render_sample(0, "train", 0, 0, 0, 16)
    assert not np.array_equal(image, render_sample(0, "test", 0, 0, 0, 16)[0])


# ---------------------------------------------------------------- the supervised reference

@pytest.mark.parametrize("flip_p", [0.0, 0.5])
def test_supervised_reference_trains_on_the_recipe_views(flip_p):
    from relic_fast.experiments.supervised import supervised_transform

    config = load_config(None, ["views.large_size=24", "views.large_area=[0.3, 1.0]", f"views.flip_p={flip_p}"])
    steps = {type(step).__name__: step for step in supervised_transform(config).transforms}
    crop, flip = steps["RandomResizedCrop"], steps["RandomHorizontalFlip"]
    assert crop.size == (24, 24) and crop.scale == (0.3, 1.0)
    assert crop.ratio == pytest.approx(config.views.aspect_ratio)
    assert flip.p == flip_p
    assert steps["Normalize"].mean == list(config.views.mean)


def test_supervised_reference_chooses_its_lr_on_val_and_reports_head_and_probe(tiny_demo):
    from relic_fast.experiments.supervised import supervised_reference

    lines = []
    config = load_config(None, TINY)
    result = supervised_reference(config, tiny_demo, steps=2, lr_grid=(0.1, 0.4), log=lines.append)
    assert [entry["base_lr"] for entry in result["lr_grid"]] == [0.1, 0.4]
    best = max(result["lr_grid"], key=lambda entry: entry["val_top1"])
    assert result["base_lr"] == best["base_lr"]
    assert result["head_splits"]["val"]["top1"] == best["val_top1"]  # the head that won on val
    assert list(result["splits"]) == list(result["head_splits"]) == ["val", "test", "val_correlated"]
    assert result["steps"] == 2 and result["train_s"] > 0
    assert any("supervised, base lr 0.4 (seed 0): step 2/2" in line for line in lines)  # progress while it trains


# ---------------------------------------------------------------- the lightly BYOL peer

def test_peer_byol_uses_the_recipe_geometry_and_shows_progress(tiny_demo):
    pytest.importorskip("lightly")
    from relic_fast.experiments.peer import peer_loader, peer_reference

    config = load_config(None, TINY + ["views.large_area=[0.3, 1.0]", "views.flip_p=0.0"])
    views = peer_loader(config, tiny_demo, "BYOL").dataset.transform.transforms
    steps = [step for view in views for step in view.transform.transforms]
    crops = [step for step in steps if type(step).__name__ == "RandomResizedCrop"]
    flips = [step for step in steps if type(step).__name__ == "RandomHorizontalFlip"]
    assert len(crops) == len(flips) == 2 and all(c.size == (16, 16) and c.scale == (0.3, 1.0) for c in crops)
    assert all(flip.p == 0.0 for flip in flips)
    lines = []
    result = peer_reference(config, tiny_demo, steps=2, method="BYOL", log=lines.append)
    assert result["method"] == "lightly BYOL" and list(result["splits"]) == ["val", "test", "val_correlated"]
    assert lines[-1].startswith("lightly BYOL (seed 0): step 2/2 | loss ")


# ---------------------------------------------------------------- rows, reruns and the table

def fake_scores(calls):
    """A stand-in for `evaluate_encoder` that records each call."""
    def evaluate(encoder, config, data_root):
        calls.append(config.train.seed)
        return {"splits": {"val": {"top1": 20.0 + len(calls), "top5": 60.0}, "test": {"top1": 21.0, "top5": 60.0}}}
    return evaluate


def test_a_rerun_with_the_same_out_runs_only_the_missing_rows(tiny_demo, tmp_path, monkeypatch):
    from relic_fast.experiments import experiment, variants

    calls = []
    monkeypatch.setattr(variants, "evaluate_encoder", fake_scores(calls))
    config_path = tmp_path / "tiny.toml"
    config_path.write_text("[views]\nsaliency_p = 0.0\n")
    first = experiment.run_demo_experiment(config_path, data_root=tiny_demo, out_dir=tmp_path / "exp", seeds=[0, 1],
                                           variants=["random_init"])
    assert calls == [0, 1]
    saved = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert [row["seed"] for row in saved["rows"]] == [0, 1]
    again = experiment.run_demo_experiment(config_path, data_root=tiny_demo, out_dir=tmp_path / "exp", seeds=[0, 1, 2],
                                           variants=["random_init", "random_init_zero_residual"])
    assert calls == [0, 1, 0, 1, 2, 2]  # seed by seed: seed 0's new row, seed 1's, then both of seed 2
    assert again["rows"][:2] == first["rows"]
    assert len(again["rows"]) == 6 and again["summary"]["random_init"]["val_top1"]["n"] == 3
    config_path.write_text("[views]\nsaliency_p = 0.0\n[loss]\nbeta = 0.5\n")
    with pytest.raises(experiment.ExperimentMismatch, match="resolved recipe"):
        experiment.run_demo_experiment(config_path, data_root=tiny_demo, out_dir=tmp_path / "exp", seeds=[0],
                                       variants=["random_init"])


def test_one_seed_reads_n1_not_a_zero_spread():
    from relic_fast.experiments.summary import cell, mean_std

    assert cell(mean_std([40.6])) == "40.6 (n=1)"
    assert cell(mean_std([40.0, 42.0])) == "41.0 ± 1.4"
    assert cell(mean_std([3.0]), signed=True) == "+3.0 (n=1)" and cell(None) == "–"


def test_learned_masks_are_computed_once_per_dataset(tiny_demo, tmp_path, monkeypatch):
    from relic_fast.dataset_tools import masks as mask_tools
    from relic_fast.experiments.variants import learned_masks

    monkeypatch.setenv("RELIC_FAST_CACHE", str(tmp_path / "cache"))
    runs = []
    real = mask_tools.compute_masks
    monkeypatch.setattr(mask_tools, "compute_masks", lambda *a, **k: runs.append(a) or real(*a, **k))
    first = learned_masks(tiny_demo, log=lambda line: None)
    assert learned_masks(tiny_demo, log=lambda line: None) == first and len(runs) == 1
    assert len(list(first.rglob("*.png"))) == 40 and (first / "complete.json").is_file()
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*.png")) == sorted(
        p.relative_to(tiny_demo / "train").with_suffix(".png").as_posix() for p in (tiny_demo / "train").rglob("*.jpg"))
