"""Whole evaluation runs on a tiny demo dataset: the `linear-eval` CLI (random init and a checkpoint),
the experiment (its rows, seeds and summary) and the supervised reference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from relic_fast.evaluation.features import extract_features
from relic_fast.evaluation.linear import evaluate_head


# ---------------------------------------------------------------- the experiment's summary

def test_experiment_summary_is_mean_and_std_over_seeds():
    from relic_fast.experiments.summary import summarize

    def row(variant, seed, val, correlated):
        return {"variant": variant, "seed": seed, "background_gap": correlated - val,
                "splits": {"val": {"top1": val, "top5": 100.0}, "val_correlated": {"top1": correlated, "top5": 100.0}}}

    rows = [row("random_init", 0, 10.0, 20.0), row("random_init", 1, 14.0, 20.0),
            row("relicv2_saliency", 0, 50.0, 55.0)]
    summary = summarize(rows)
    assert list(summary) == ["random_init", "relicv2_saliency"]
    assert summary["random_init"]["val_top1"]["mean"] == pytest.approx(12.0)
    assert summary["random_init"]["val_top1"]["std"] == pytest.approx(math.sqrt(8.0))  # sample std
    assert summary["random_init"]["background_gap"]["mean"] == pytest.approx(8.0)
    assert summary["relicv2_saliency"]["val_correlated_top1"] == {"mean": 55.0, "std": None, "n": 1}  # no spread
    assert summary["relicv2_saliency"]["margin"] == {"mean": 40.0, "std": None, "n": 1}  # paired with seed 0


# ---------------------------------------------------------------- the linear-eval CLI on tiny demo data

TINY = ["model.encoder=resnet18", "model.small_stem=true", "eval.image_size=16", "eval.linear_epochs=2",
        "eval.linear_batch_size=16", "train.device=cpu", "data.device=cpu", "data.num_threads=1"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """A 40-image demo dataset at 16 px (train/, val/, val_correlated/, test/, masks/)."""
    from relic_fast.demo_data import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    generate_demo_dataset(root, images=40, size=16, seed=0, workers=1, progress=False)
    return root


def sets(options):
    """`--set` flags for the CLI."""
    return [item for option in options for item in ("--set", option)]


@pytest.mark.parametrize("mode", ["augmented", "cached_features", "logistic"])
def test_linear_eval_cli_random_init_writes_report(tiny_demo, tmp_path, mode):
    import json

    from typer.testing import CliRunner

    from relic_fast.cli import app

    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["linear-eval", "--random-init", "--data", str(tiny_demo), "--out", str(out),
                                      *sets(TINY + [f"eval.linear_mode={mode}"])])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "linear_eval.json").read_text())
    assert report["random_init"] is True and report["mode"] == mode
    assert list(report["splits"]) == ["val", "test", "val_correlated"]
    assert report["top1"] == report["splits"]["val"]["top1"]
    for scores in report["splits"].values():
        assert 0.0 <= scores["top1"] <= scores["top5"] <= 100.0
    assert report["top5_k"] == 5 and report["num_classes"] == 10 and report["feature_dim"] == 512
    assert report["val_samples"] == {"val": 10, "test": 10, "val_correlated": 10}
    assert report["background_gap"] == pytest.approx(report["splits"]["val_correlated"]["top1"]
                                                     - report["splits"]["val"]["top1"])
    assert "val_correlated" in result.output


def test_linear_eval_cli_reads_a_checkpoint_and_writes_into_its_run_folder(tiny_demo, tmp_path):
    import json

    from typer.testing import CliRunner

    from relic_fast.checkpoint import save_checkpoint
    from relic_fast.cli import app
    from relic_fast.config import load_config
    from relic_fast.models import build_networks

    saved = load_config(None, TINY + ["model.projector_hidden=8", "model.predictor_hidden=8",
                                      "model.embedding_dim=4", "eval.linear_mode=cached_features"])
    online, _ = build_networks(saved.model)
    run = tmp_path / "run"
    save_checkpoint({"config": saved.to_dict(), "online": online.state_dict(), "step": 1}, run, 1, keep=1)
    result = CliRunner().invoke(app, ["linear-eval", "--checkpoint", str(run), "--data", str(tiny_demo),
                                      "--set", "eval.linear_epochs=1"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "linear_eval" / "linear_eval.json").read_text())  # the default --out folder
    assert report["random_init"] is False and report["checkpoint"].endswith(".pt")
    assert report["epochs"] == 1 and report["mode"] == "cached_features" and report["image_size"] == 16


def test_linear_eval_cli_needs_a_checkpoint_or_random_init(tiny_demo):
    from typer.testing import CliRunner

    from relic_fast.cli import app

    result = CliRunner().invoke(app, ["linear-eval", "--data", str(tiny_demo)])
    assert result.exit_code == 2
    assert "--random-init" in result.output


# ---------------------------------------------------------------- the demo experiment

TINY_RECIPE = """
[data]
device = "cpu"
num_threads = 1

[views]
num_large = 2
num_small = 1
large_size = 16
small_size = 8
saliency_p = 0.5

[model]
encoder = "resnet18"
small_stem = true
projector_hidden = 16
embedding_dim = 8
predictor_hidden = 16
sync_batchnorm = false

[optim]
warmup_epochs = 0.0

[train]
batch_size = 16
epochs = 1
device = "cpu"
compile = "off"
precision = "fp32"
log_every = 1

[eval]
linear_epochs = 1
linear_batch_size = 64
linear_mode = "cached_features"
linear_feature_norm = "batchnorm"
image_size = 8
"""


def test_experiment_pretrains_every_variant_per_seed_and_reports(tiny_demo, tmp_path, monkeypatch):
    """Orchestration with the trainer replaced by a recorder that saves a fresh network's checkpoint, and the
    lightly peers and the supervised reference by stubs (each has its own test)."""
    import json

    from relic_fast.checkpoint import save_checkpoint
    from relic_fast.experiments import variants
    from relic_fast.experiments.experiment import run_demo_experiment
    from relic_fast.models import build_networks

    monkeypatch.setenv("RELIC_FAST_CACHE", str(tmp_path / "cache"))  # the learned masks' cache
    calls = []

    def fake_pretrain(config, *, out_dir, resume=False):
        calls.append((config, out_dir))
        online, _ = build_networks(config.model)
        path = save_checkpoint({"config": config.to_dict(), "online": online.state_dict()}, out_dir, 3, keep=1)
        return {"checkpoint": path, "final_loss": 1.5, "steps": 3}

    def scores(val):
        return {"splits": {"val": {"top1": val, "top5": 90.0}, "test": {"top1": val + 1, "top5": 90.0},
                           "val_correlated": {"top1": val + 10, "top5": 90.0}}, "background_gap": 10.0}

    monkeypatch.setattr(variants, "pretrain", fake_pretrain)
    peer_calls = []
    monkeypatch.setattr(variants, "lightly_available", lambda: True)
    monkeypatch.setattr(variants, "peer_reference", lambda config, data_root, *, steps, method, log:
                        peer_calls.append((steps, method)) or {**scores(30.0), "steps": steps, "train_s": 1.0})
    monkeypatch.setattr(variants, "supervised_reference", lambda config, data_root, log: {
        **scores(20.0), "head_splits": scores(25.0)["splits"], "head_background_gap": 10.0, "steps": 2,
        "lr_grid": [{"base_lr": 0.1, "val_top1": 25.0}], "base_lr": 0.1, "train_s": 2.0})
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    # One seed keeps this under ~20 s (each linear eval is a few resnet18 passes); `summarize` is tested above.
    results = run_demo_experiment(recipe, data_root=tiny_demo, out_dir=tmp_path / "exp", seeds=[3], steps=3)
    pretrained = {out_dir.name: config for config, out_dir in calls}
    assert list(pretrained) == ["relicv2_no_saliency", "relicv2_saliency", "relicv2_no_invariance",
                                "relicv2_multicrop", "relicv2_learned_masks"]  # one run folder per variant
    assert all(c.train.seed == 3 and c.train.max_steps == 3 and c.data.path == str(tiny_demo)
               for c in pretrained.values())
    reference = pretrained["relicv2_saliency"]
    assert (reference.views.saliency_p, reference.loss.beta, reference.views.num_small) == (0.5, 1.0, 1)
    assert pretrained["relicv2_no_saliency"].views.saliency_p == 0.0
    assert pretrained["relicv2_no_invariance"].loss.beta == 0.0
    assert (pretrained["relicv2_multicrop"].views.num_small, pretrained["relicv2_multicrop"].views.small_size) == (2, 8)
    masks = Path(pretrained["relicv2_learned_masks"].data.masks)
    assert masks.is_relative_to(tmp_path / "cache") and len(list(masks.rglob("*.png"))) == 40
    for name, config in pretrained.items():  # each the reference with one change
        changed = {(section, key) for section, values in config.to_dict().items() for key, value in values.items()
                   if reference.to_dict()[section][key] != value}
        assert len(changed) <= 2 and (name == "relicv2_saliency") == (not changed), (name, changed)
    assert [row["variant"] for row in results["rows"]] == list(variants.VARIANTS)
    assert peer_calls == [(40 // 16, "SimCLR"), (40 // 16, "BYOL")]  # what pretraining runs: 1 epoch of 40
    assert results["rows"][4]["overrides"] == {"loss": {"beta": 0.0}}
    baseline = results["rows"][0]["splits"]
    assert results["summary"]["peer"]["margin"]["mean"] == pytest.approx(30.0 - baseline["val"]["top1"])
    assert results["summary"]["peer"]["test_margin"]["mean"] == pytest.approx(31.0 - baseline["test"]["top1"])
    assert results["summary"]["supervised_head"]["val_top1"]["mean"] == 25.0  # its own head, next to its probe
    assert results["summary"]["supervised"]["val_top1"]["mean"] == 20.0
    assert "margin" not in results["summary"]["random_init"]
    assert results["summary"]["relicv2_saliency"]["train_s"]["n"] == 1
    for metrics in results["summary"].values():
        assert {"val_top1", "test_top1", "val_correlated_top1", "background_gap"} <= set(metrics)
        assert metrics["val_top1"]["n"] == 1 and metrics["val_top1"]["std"] is None
    saved = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert saved["settings"]["seeds"] == [3] and saved["settings"]["steps"] == 3
    assert saved["summary"] == results["summary"]
    assert saved["provenance"]["config"]["views"]["saliency_p"] == 0.5


# ---------------------------------------------------------------- the supervised reference


def test_supervised_reference_learns_a_separable_toy_task():
    """Two classes told apart by colour: trained end-to-end with labels, the head scores held-out images ~100%."""
    from relic_fast.experiments.supervised import train_supervised
    from relic_fast.models import build_encoder

    torch.manual_seed(0)

    def batch(count):
        labels = torch.randint(0, 2, (count,))
        images = torch.randn(count, 3, 8, 8) * 0.3
        images[:, 0] += labels[:, None, None] * 2.0 - 1.0           # class 1: red up, class 0: red down
        return images, labels

    train = [batch(16) for _ in range(4)]
    encoder = build_encoder("resnet18", small_stem=True)
    head = train_supervised(encoder, train, steps=24, num_classes=2, batch_size=16, device="cpu", base_lr=1.6)
    assert not encoder.training and not head.training
    features, labels = extract_features(encoder, [batch(64)], "cpu")
    assert evaluate_head(head, features, labels)["top1"] >= 95.0


def test_untrained_supervised_reference_is_at_chance_on_the_toy_task():
    """The same toy with zero steps: the zero-initialized head predicts one class, so the test above can fail."""
    from relic_fast.experiments.supervised import train_supervised
    from relic_fast.models import build_encoder

    torch.manual_seed(0)
    encoder = build_encoder("resnet18", small_stem=True)
    head = train_supervised(encoder, [], steps=0, num_classes=2, batch_size=16, device="cpu")
    labels = torch.arange(64) % 2
    features, _ = extract_features(encoder, [(torch.randn(64, 3, 8, 8), labels)], "cpu")
    assert evaluate_head(head, features, labels)["top1"] == pytest.approx(50.0)


def test_supervised_reference_runs_the_pretraining_step_budget():
    from relic_fast.config import config_from_dict
    from relic_fast.experiments.supervised import pretraining_steps

    config = config_from_dict({}, "test", {"train": {"batch_size": 32, "epochs": 2}})
    assert pretraining_steps(config, 2000) == 124                    # 62 full batches an epoch (drop_last)
    capped = config_from_dict({}, "test", {"train": {"batch_size": 32, "epochs": 2, "max_steps": 3}})
    assert pretraining_steps(capped, 2000) == 3
