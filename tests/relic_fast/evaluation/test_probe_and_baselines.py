"""The strong probe (standardized features + L-BFGS logistic regression) on cases with a known answer,
the default-init random baseline, and the lightly peer row (its skip and, when lightly is installed, a run)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from relic_fast.evaluation.linear import evaluate_head
from relic_fast.evaluation.logistic import fit_logistic_on_features, stratified_holdout


def gaussian_classes(n, *, num_classes=5, dim=32, separation=2.0, noise=0.5, seed=0):
    """Features of `num_classes` Gaussian clusters around random directions, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, num_classes, (n,), generator=generator)
    return directions[labels] * separation + noise * torch.randn(n, dim, generator=generator), labels


def test_logistic_probe_separates_a_linearly_separable_case_whatever_the_feature_scale():
    train, train_labels = gaussian_classes(600)
    test, test_labels = gaussian_classes(300, seed=1)
    scale = torch.logspace(-6, 0, 32)  # features tiny and badly conditioned, like a zero-init network's
    probe, info = fit_logistic_on_features(train * scale, train_labels, num_classes=5)
    assert evaluate_head(probe, test * scale, test_labels)["top1"] >= 99.0
    assert set(info["holdout_top1"]) == {1e-4, 1e-3, 1e-2, 1e-1} and info["l2"] in info["holdout_top1"]


def test_logistic_probe_reaches_the_bayes_accuracy_of_a_noisy_case():
    """Separable clusters, then 40 % of labels (train and test) redrawn uniformly: the best any classifier can
    do is 60 % + 40 % / 4 = 70 %, and a converged probe gets there; labels that carry no signal give chance."""
    def noisy(n, seed):
        features, labels = gaussian_classes(n, num_classes=4, seed=seed)
        generator = torch.Generator().manual_seed(seed + 100)
        redraw = torch.rand(n, generator=generator) < 0.4
        return features, torch.where(redraw, torch.randint(0, 4, (n,), generator=generator), labels)

    train, train_labels = noisy(3000, 0)
    test, test_labels = noisy(4000, 1)
    probe, _ = fit_logistic_on_features(train, train_labels, num_classes=4)
    assert evaluate_head(probe, test, test_labels)["top1"] == pytest.approx(70.0, abs=2.5)
    generator = torch.Generator().manual_seed(5)
    control, _ = fit_logistic_on_features(train, torch.randint(0, 4, (3000,), generator=generator), num_classes=4)
    assert evaluate_head(control, test, torch.randint(0, 4, (4000,), generator=generator))["top1"] == \
        pytest.approx(25.0, abs=2.5)


def colour_images(n, seed):
    """8x8 images whose class (0, 1, 2) is the dominant colour channel, under pixel noise (a Bayes accuracy of ~100 %)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=generator)
    images = 0.5 * torch.randn(n, 3, 8, 8, generator=generator)
    images[torch.arange(n), labels] += 1.0
    return images, labels


def test_logistic_probe_on_random_features_of_a_case_with_a_known_answer():
    """A default-init random ResNet18 keeps the mean colour, so its features solve the colour task; noise
    images with labels that carry no signal stay at chance (33 %)."""
    from relic_fast.models import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("resnet18", small_stem=True, zero_init_residual=False).eval()
    with torch.no_grad():
        (train, train_labels), (test, test_labels) = colour_images(300, 0), colour_images(300, 1)
        train_features, test_features = encoder(train), encoder(test)
    probe, _ = fit_logistic_on_features(train_features, train_labels, num_classes=3)
    assert evaluate_head(probe, test_features, test_labels)["top1"] >= 95.0
    generator = torch.Generator().manual_seed(9)
    control, _ = fit_logistic_on_features(train_features, torch.randint(0, 3, (300,), generator=generator),
                                          num_classes=3)
    assert evaluate_head(control, test_features, torch.randint(0, 3, (300,), generator=generator))["top1"] <= 45.0


def test_stratified_holdout_keeps_every_class_on_both_sides():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    fit, held = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(17))
    assert sorted(labels[held].tolist()) == [0, 0, 1, 2]
    assert set(labels[fit].tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- the default-init baseline


def residual_gammas(encoder: nn.Module) -> torch.Tensor:
    """The last BatchNorm gamma of every residual block, concatenated."""
    from torchvision.models.resnet import BasicBlock

    return torch.cat([m.bn2.weight.detach() for m in encoder.modules() if isinstance(m, BasicBlock)])


def test_random_init_baseline_is_the_default_init_and_pretraining_keeps_its_own(tmp_path, monkeypatch):
    from relic_fast.config import load_config
    from relic_fast.evaluation import runner
    from relic_fast.models import build_networks

    config = load_config(None, ["model.encoder=resnet18", "model.small_stem=true"])
    assert config.model.zero_init_residual  # pretraining: BYOL's init by default
    assert torch.all(residual_gammas(build_networks(config.model)[0].encoder) == 0)
    default = load_config(None, ["model.encoder=resnet18", "model.zero_init_residual=false"])
    assert torch.all(residual_gammas(build_networks(default.model)[0].encoder) == 1)
    seen = []
    monkeypatch.setattr(runner, "evaluate_encoder", lambda encoder, *a, **k: seen.append(encoder) or {"splits": {}})
    runner.run_linear_eval(data_root=tmp_path, config=config, random_init=True, out=tmp_path / "r.json")
    assert torch.all(residual_gammas(seen[0]) == 1)  # what `linear-eval --random-init` evaluates
    zero = runner.random_init_encoder(config, zero_init_residual=True)
    assert torch.all(residual_gammas(zero) == 0)
    assert torch.equal(zero.conv1.weight, seen[0].conv1.weight)  # same seed, same weights but the gammas


# ---------------------------------------------------------------- the lightly peer row


def test_peer_rows_are_skipped_with_one_line_each_without_lightly(monkeypatch):
    from relic_fast.experiments import experiment, variants

    monkeypatch.setattr(variants, "lightly_available", lambda: False)
    lines = []
    chosen = experiment.selected_variants(None, log=lines.append)
    assert "peer" not in chosen and "peer_byol" not in chosen and chosen[0] == "random_init"
    assert lines == [f"{name} row skipped: lightly is not installed (pip install 'relic-fast[peer]')"
                     for name in ("peer", "peer_byol")]
    with pytest.raises(ValueError, match="unknown variant"):
        experiment.selected_variants(["nope"])


def test_peer_simclr_trains_the_encoder_and_probes_it(tmp_path):
    pytest.importorskip("lightly")
    from relic_fast.config import load_config
    from relic_fast.demo_data import generate_demo_dataset
    from relic_fast.experiments.peer import peer_reference

    root = tmp_path / "data"
    generate_demo_dataset(root, images=40, size=16, seed=0, workers=1, progress=False)
    config = load_config(None, ["model.encoder=resnet18", "model.small_stem=true", "model.projector_hidden=16",
                                "model.embedding_dim=8", "views.large_size=16", "train.batch_size=8",
                                "train.device=cpu", "data.device=cpu", "data.num_threads=1",
                                "eval.image_size=16", "eval.linear_mode=logistic", "eval.linear_l2_grid=[0.01]"])
    result = peer_reference(config, root, steps=2)
    assert result["steps"] == 2 and result["method"] == "lightly SimCLR"
    assert list(result["splits"]) == ["val", "test", "val_correlated"]
    assert all(0.0 <= s["top1"] <= 100.0 for s in result["splits"].values())


@pytest.mark.parametrize("flip_p", [0.0, 0.5])
def test_peer_views_follow_the_recipe_geometry(tmp_path, flip_p):
    """The peer's SimCLR views take the recipe's size, crop area and flip probability (no flips on digits)."""
    pytest.importorskip("lightly")
    from relic_fast.config import load_config
    from relic_fast.demo_data import generate_demo_dataset
    from relic_fast.experiments.peer import peer_loader

    root = tmp_path / "data"
    generate_demo_dataset(root, images=20, size=16, seed=0, workers=1, progress=False)
    config = load_config(None, ["views.large_size=24", "views.large_area=[0.3, 1.0]", f"views.flip_p={flip_p}",
                                "train.batch_size=4"])
    steps = [step for view in peer_loader(config, root).dataset.transform.transforms
             for step in view.transform.transforms]
    crops = [step for step in steps if type(step).__name__ == "RandomResizedCrop"]  # torchvision v1 or v2
    flips = [step for step in steps if type(step).__name__ == "RandomHorizontalFlip"]
    assert len(crops) == len(flips) == 2                        # two views
    assert all(crop.size == (24, 24) and crop.scale == (0.3, 1.0) for crop in crops)
    assert all(flip.p == flip_p for flip in flips)
