"""Tests of the evaluation package's pieces: kNN vs a brute-force oracle, linear probe fitting, feature
extraction with a frozen encoder, and the merge of a checkpoint's config with the eval recipe. Whole
evaluation runs (the `linear-eval` CLI, the experiment) are in test_evaluation_runs.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from relic_fast.evaluation.features import extract_features
from relic_fast.evaluation.knn import knn_accuracy, knn_classify
from relic_fast.evaluation.linear import evaluate_head, fit_linear_on_features, topk_accuracy


def knn_brute_force(train, train_labels, test, k, temperature, num_classes):
    """Oracle: explicit loops over test and train rows, float64, sorted neighbours, per-class sums."""
    predictions = []
    for x in test.double().tolist():
        norm_x = math.sqrt(sum(v * v for v in x))
        similarities = []
        for j, y in enumerate(train.double().tolist()):
            norm_y = math.sqrt(sum(v * v for v in y))
            similarities.append((sum(a * b for a, b in zip(x, y)) / (norm_x * norm_y), j))
        similarities.sort(reverse=True)
        votes = [0.0] * num_classes
        for similarity, j in similarities[:k]:
            votes[int(train_labels[j])] += math.exp(similarity / temperature)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(predictions)


@pytest.mark.parametrize("k,temperature,chunk_size", [(1, 0.07, 1024), (5, 0.07, 7), (20, 0.5, 16), (100, 0.1, 3)])
def test_knn_matches_brute_force(k, temperature, chunk_size):
    generator = torch.Generator().manual_seed(k)
    num_classes = 4
    train = torch.randn(60, 8, generator=generator)
    train_labels = torch.randint(0, num_classes, (60,), generator=generator)
    test = torch.randn(25, 8, generator=generator) * 3.0  # scale must not matter: cosine similarity
    predicted = knn_classify(train, train_labels, test, k=k, temperature=temperature,
                             num_classes=num_classes, chunk_size=chunk_size)
    expected = knn_brute_force(train, train_labels, test, min(k, 60), temperature, num_classes)
    assert predicted.dtype == torch.long
    assert torch.equal(predicted, expected)


def test_knn_accuracy_is_percent_of_correct_predictions():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 16, generator=generator) * 5
    train_labels = torch.arange(3).repeat(20)
    test_labels = torch.arange(3).repeat(10)
    train = centres[train_labels] + torch.randn(60, 16, generator=generator)
    test = centres[test_labels] + torch.randn(30, 16, generator=generator)
    assert knn_accuracy(train, train_labels, test, test_labels, num_classes=3) == 100.0
    wrong = (test_labels + 1) % 3
    assert knn_accuracy(train, train_labels, test, wrong, num_classes=3) == 0.0
    half = torch.where(torch.arange(30) < 15, test_labels, wrong)
    assert knn_accuracy(train, train_labels, test, half, num_classes=3) == pytest.approx(50.0)


def test_linear_probe_separates_linearly_separable_features():
    generator = torch.Generator().manual_seed(0)
    num_classes, dim = 5, 32
    directions = torch.randn(num_classes, dim, generator=generator)

    def sample(n):
        labels = torch.randint(0, num_classes, (n,), generator=generator)
        return directions[labels] * 2 + 0.5 * torch.randn(n, dim, generator=generator), labels

    train_features, train_labels = sample(600)
    test_features, test_labels = sample(300)
    head = fit_linear_on_features(train_features, train_labels, num_classes=num_classes, epochs=10,
                                  batch_size=64, base_lr=0.3, seed=0)
    result = evaluate_head(head, test_features, test_labels)
    assert result["top1"] >= 99.0
    assert result["top5"] == 100.0
    shuffled = train_labels[torch.randperm(600, generator=generator)]  # control: labels carry no signal
    control = fit_linear_on_features(train_features, shuffled, num_classes=num_classes, epochs=10,
                                     batch_size=64, base_lr=0.3, seed=0)
    assert evaluate_head(control, test_features, test_labels)["top1"] < 50.0


def test_linear_probe_is_deterministic_given_seed():
    features, labels = torch.randn(100, 6), torch.randint(0, 3, (100,))
    fit = lambda seed: fit_linear_on_features(features, labels, num_classes=3, epochs=3, batch_size=16,  # noqa: E731
                                              base_lr=0.1, seed=seed).linear.weight
    assert torch.equal(fit(3), fit(3))
    assert not torch.equal(fit(3), fit(4))


def test_batchnorm_probe_is_independent_of_feature_scale():
    generator = torch.Generator().manual_seed(2)
    directions = torch.randn(4, 16, generator=generator)
    labels = torch.randint(0, 4, (401,), generator=generator)  # 401 = 6 * 64 + 17: a partial last batch
    features = (directions[labels] + 0.3 * torch.randn(401, 16, generator=generator)) * 1e-3 + 5.0
    fit = lambda norm: fit_linear_on_features(features, labels, num_classes=4, epochs=3, batch_size=64,  # noqa: E731
                                              base_lr=0.3, seed=0, feature_norm=norm)
    assert evaluate_head(fit("batchnorm"), features, labels)["top1"] >= 99.0
    assert evaluate_head(fit("none"), features, labels)["top1"] < 60.0  # raw tiny-scale features: lr too small
    one = fit_linear_on_features(features[:1], labels[:1], num_classes=4, epochs=1, batch_size=64, base_lr=0.3,
                                 feature_norm="batchnorm")  # a batch of one must not fail
    assert torch.isfinite(one.linear.weight).all()


def test_topk_accuracy_caps_k_at_number_of_classes():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 0, 1])
    top1, top2, top5 = topk_accuracy(logits, labels, (1, 2, 5))
    assert top1 == 25.0          # only row 0 is right at k=1
    assert top2 == 50.0          # rows 0 and 1 (label 2 second) within 2
    assert top5 == 100.0         # k capped at 3 classes: always a hit


class TinyEncoder(nn.Module):
    """Stand-in encoder with BatchNorm (whose running stats must not move in eval mode)."""

    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)).relu().mean(dim=(2, 3))


def test_extract_features_freezes_encoder_and_keeps_its_mode():
    torch.manual_seed(0)
    encoder = TinyEncoder().train()
    batches = [(torch.randn(5, 3, 8, 8), torch.arange(5)), (torch.randn(2, 3, 8, 8), torch.tensor([7, 8]))]
    stats_before = encoder.bn.running_mean.clone()
    features, labels = extract_features(encoder, batches, "cpu")
    assert encoder.training                                   # mode restored
    assert torch.equal(encoder.bn.running_mean, stats_before)  # no BN update
    assert features.shape == (7, 4) and features.dtype == torch.float32 and not features.requires_grad
    assert labels.tolist() == [0, 1, 2, 3, 4, 7, 8]
    encoder.eval()
    with torch.no_grad():
        expected = encoder(torch.cat([b[0] for b in batches]))
    torch.testing.assert_close(features, expected)


# ---------------------------------------------------------------- config merge

def test_checkpoint_eval_config_keeps_the_encoder_and_takes_eval_settings(tmp_path):
    from relic_fast.config import load_config
    from relic_fast.evaluation.runner import checkpoint_eval_config

    saved = load_config(None, ["model.encoder=resnet18", "model.small_stem=true", "eval.image_size=16",
                               "eval.linear_epochs=7"])
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[model]\nencoder = 'resnet50'\n\n[eval]\nlinear_epochs = 3\n")
    merged = checkpoint_eval_config(saved, recipe, ["eval.linear_mode=cached_features"])
    assert merged.model == saved.model                      # the checkpoint fixes the encoder
    assert merged.eval.linear_epochs == 3                   # the file's [eval] wins over the saved one
    assert merged.eval.image_size == 16                     # saved keys the file leaves out stay
    assert merged.eval.linear_mode == "cached_features"     # --set on top
    assert checkpoint_eval_config(saved, None, None) == saved
