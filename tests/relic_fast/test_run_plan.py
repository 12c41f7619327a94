"""The run plan: every "auto" resolved once, by one rule each, recorded in the run folder; one spelling."""

import tomllib
import warnings

import pytest
import torch

import relic_fast.loss
from relic_fast.config import ConfigError, config_from_dict, load_config
from relic_fast.evaluation.validate import KnnValidator
from relic_fast.devices import dali_device_for, torch_device_for
from relic_fast.run_plan import planned_config, resolve_plan


def test_auto_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = resolve_plan(load_config(None))
    assert (plan.device, plan.dali_device_id, plan.compile) == ("cpu", None, False)
    assert (plan.loss_implementation, plan.lars_implementation, plan.interpolation) == ("reference", "reference", "linear")
    assert plan.precision == "bf16"


def test_auto_on_a_gpu_machine_follows_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(relic_fast.loss, "_triton_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    plan = resolve_plan(load_config(None))
    assert (plan.device, plan.dali_device_id, plan.compile) == ("cuda:3", 3, True)
    assert (plan.loss_implementation, plan.interpolation) == ("fused", "cubic")
    cpu_pipeline = resolve_plan(load_config(None, ["data.device=cpu", "train.compile=off"]), local_rank=1)
    assert (cpu_pipeline.device, cpu_pipeline.dali_device_id, cpu_pipeline.compile) == ("cuda:1", None, False)
    assert cpu_pipeline.interpolation == "linear"  # the CPU pipeline's rule, whatever the networks' device


def test_asking_for_a_gpu_where_there_is_none_names_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'gpu' but no CUDA GPU"):
        resolve_plan(load_config(None, ["train.device=gpu"]))
    with pytest.raises(ConfigError, match="data.device = 'gpu'"):
        dali_device_for("gpu", torch.device("cpu"))
    with pytest.raises(ConfigError, match="choose one of auto, cpu, gpu"):
        torch_device_for("cuda")


def test_planned_config_reads_no_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = load_config(None)
    planned = planned_config(config, resolve_plan(config))
    assert (planned.views.interpolation, planned.loss.implementation, planned.optim.implementation) == \
        ("linear", "reference", "reference")
    assert planned.model == config.model and planned.train == config.train


def test_plan_toml_reads_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plan = resolve_plan(load_config(None))
    assert tomllib.loads(plan.to_toml())["plan"] == {**plan.__dict__, "dali_device_id": -1}


def test_legacy_spellings_are_read_as_todays_with_a_warning(tmp_path):
    recipe = tmp_path / "old.toml"
    recipe.write_text('[train]\ndevice = "cuda"\n[optim]\nimplementation = "native"\n'
                      '[data]\ndevice = "cuda"\noutput_dtype = "bfloat16"\n')
    with pytest.warns(UserWarning) as caught:
        config = load_config(recipe)
    notes = [str(w.message) for w in caught]
    assert any("old.toml: train.device = 'cuda' is spelled 'gpu' now" in note for note in notes), notes
    assert any("data.output_dtype is ignored: views always leave DALI as uint8" in note for note in notes), notes
    assert (config.train.device, config.data.device, config.optim.implementation) == ("gpu", "gpu", "reference")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint's saved config: read quietly
        saved = config_from_dict({"train": {"device": "cuda"}}, "ckpt", warn_legacy=False)
    assert saved.train.device == "gpu"
    with pytest.raises(ConfigError, match="'train.precision'"):
        load_config(None, ["train.precision=bfloat16"])  # only the keys listed are migrated


def test_knn_validator_asks_at_its_epochs_and_scores_the_val_split(tiny_config, tiny_demo):
    from dali_pipelines.dataset import resolve_dataset
    from relic_fast.distributed import World
    from relic_fast.evaluation.protocol import knn_eval
    from relic_fast.models import build_encoder

    assert KnnValidator.from_config(tiny_config) is None  # knn_every_epochs = 0
    config = load_config(None, ["train.knn_every_epochs=2", "eval.image_size=32", "data.num_threads=1",
                                "data.device=cpu"])
    validator = KnnValidator.from_config(config)
    assert [validator.should_validate(epoch) for epoch in range(5)] == [False, False, True, False, True]
    torch.manual_seed(0)
    encoder = build_encoder(tiny_config.model.encoder, small_stem=True)
    train, val = resolve_dataset(str(tiny_demo / "train")), resolve_dataset(str(tiny_demo / "val"))
    world = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    metrics = validator.validate(encoder, train_dataset=train, val_dataset=val, world=world)
    assert set(metrics) == {"knn_top1"} and 0.0 <= metrics["knn_top1"] <= 100.0
    # the same neighbours and votes as the single-set kNN of the linear-eval side
    expected = knn_eval(encoder, train_dataset=train, val_dataset=val, eval_cfg=config.eval, data_cfg=config.data,
                        device="cpu", mean=config.views.mean, std=config.views.std)
    assert metrics["knn_top1"] == pytest.approx(expected, abs=1e-9)


def test_info_shows_the_run_plan_of_a_recipe(monkeypatch):
    from typer.testing import CliRunner

    from relic_fast.cli import app
    from tests.support.tiny_recipe import DEMO_RECIPE

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(app, ["info", "--config", str(DEMO_RECIPE), "--set", "train.compile=on"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "run plan of" in result.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in result.output.splitlines()
            if line.count("│") == 3}
    assert rows["device"] == "cpu" and rows["compile"] == "True" and rows["loss_implementation"] == "reference"
    assert rows["dali_device_id"] == "cpu pipeline"
