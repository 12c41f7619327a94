"""`relic-fast profile`: the report and Chrome trace of a tiny run, and a verdict that flips with the bottleneck.

The two verdict runs are made extreme because this 2-core machine is shared and loaded: the
throttled loader (one DALI thread, no spare prefetch, 2048 px progressive 4:4:4 noise JPEGs that
take ~0.5 s each to decode, against ResNet18 on one 16 px view) delivers several times fewer
images/s than the model consumes; the heavy model (ResNet50 with 4096-wide heads against one
32 px view with every augmentation off) consumes a hundred times fewer than the loader delivers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from relic_fast.cli import app
from relic_fast.config import DataConfig, ViewsConfig, load_config
from relic_fast.profile_report import WAIT_SHARE_LIMIT, slowest_group, verdict
from relic_fast.profiler import PHASES, ProfileSettings, ablations, profile_run

CPU_RUN = ["train.device=cpu", "train.compile=off", "train.precision=fp32", "train.epochs=50", "train.log_every=1",
           "loss.implementation=reference", "optim.warmup_epochs=0", "data.device=cpu"]
TINY_DEMO = CPU_RUN + ["model.encoder=resnet18", "model.projector_hidden=64", "model.predictor_hidden=64",
                       "model.embedding_dim=32", "views.num_large=2", "views.num_small=2", "views.large_size=32",
                       "views.small_size=16", "train.batch_size=8", "data.num_threads=2"]
QUICK = ProfileSettings(steps=2, warmup=1, loader_batches=1, loader_repeats=1, synthetic_steps=2, ablation=False)


def measurements(loader: float, model: float, wait: float, ablation=None) -> dict:
    """The part of a profile's measurements the verdict reads."""
    return {"loader_images_per_s": loader, "consumption_images_per_s": model,
            "loop": {"summary": {"data_wait_share": wait}}, "ablation": ablation}


def test_verdict_rules():
    def row(group, cost, kept_only=False, within_noise=False):
        return {"group": group, "cost_ms_per_batch": cost, "share": cost / 60.0, "kept_only": kept_only,
                "within_noise": within_noise}

    blur, jitter = row("gaussian blur", 30.0), row("colour jitter + grayscale", 10.0)
    bare = row("decode + crops (everything else off)", 50.0, kept_only=True)
    noisy = row("solarize", 40.0, within_noise=True)
    ablation = {"full_batch_ms": 60.0, "noise_ms": 5.0, "groups": [jitter, noisy, bare, blur]}
    assert slowest_group(ablation) is blur
    assert slowest_group({"groups": [noisy, bare]}) is None
    slow_loader = verdict(measurements(100.0, 400.0, 0.6, ablation))
    assert slow_loader["bound"] == "input"
    assert "100.0 img/s" in slow_loader["text"] and "400.0 img/s" in slow_loader["text"] and "gaussian blur" in slow_loader["text"]
    contention = verdict(measurements(500.0, 400.0, WAIT_SHARE_LIMIT + 0.1))
    assert contention["bound"] == "input" and "contention" in contention["text"]
    compute = verdict(measurements(500.0, 400.0, 0.05))
    assert compute["bound"] == "compute" and "1.2x headroom" in compute["text"]


def test_ablations_switch_off_one_group_each():
    groups = {name: (views, data) for name, views, data in ablations(ViewsConfig(), DataConfig())}
    assert groups["gaussian blur"][0].blur_p == (0.0,) and groups["gaussian blur"][0].jitter_p == 0.8
    assert groups["colour jitter + grayscale"][0].jitter_p == 0.0 and groups["colour jitter + grayscale"][0].grayscale_p == 0.0
    bare = groups["decode + crops (everything else off)"][0]
    assert bare.blur_p == (0.0,) and bare.solarize_p == (0.0,) and bare.saliency_p == 0.0
    light = ablations(ViewsConfig(solarize_p=(0.0,), saliency_p=0.0), DataConfig())
    assert {name for name, _, _ in light} == {"colour jitter + grayscale", "gaussian blur",
                                              "decode + crops (everything else off)"}


@pytest.mark.slow
def test_profile_cli_writes_report_and_chrome_trace(tiny_demo, tmp_path, one_thread):
    out = tmp_path / "run"
    args = ["profile", "--data", str(tiny_demo), "--steps", "3", "--warmup", "1", "--loader-batches", "1",
            "--loader-repeats", "1", "--synthetic-steps", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args + [item for key in TINY_DEMO for item in ("--set", key)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "profile.json").read_text())
    m = report["measurements"]
    assert len(m["loop"]["per_step"]) == 3 and m["loop"]["summary"]["compute_ms_median"] > 0
    assert 0.0 <= m["loop"]["summary"]["data_wait_share"] <= 1.0
    assert set(m["loop"]["phases_ms"]) == set(PHASES)
    assert all(m["loop"]["phases_ms"][p]["calls"] == 3 for p in ("forward", "backward", "optimizer", "ema"))
    assert m["loader_images_per_s"] > 0 and m["consumption_images_per_s"] > 0 and m["pipeline_device"] == "cpu"
    ablation = m["ablation"]
    groups = [row["group"] for row in ablation["groups"]]
    assert {"gaussian blur", "saliency masking"} <= set(groups)
    assert groups[-1].startswith("decode + crops") and all(row["images_per_s_without"] > 0 for row in ablation["groups"])
    assert ablation["full_batch_ms"] > 0 and ablation["noise_ms"] >= 0
    assert report["verdict"]["bound"] in ("input", "compute") and report["suggestions"]
    assert report["verdict"] == verdict(m)
    assert report["config"]["model"]["encoder"] == "resnet18" and report["machine"]["torch"] == torch.__version__
    assert "ablation" in report["operator_cost_method"]
    trace = json.loads((out / "profile_trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {"forward", "backward", "optimizer", "ema", "data"} <= names
    run = out / "profiled_run"  # the profiled training's own run files, never over a run in `out`
    assert (run / "metrics.jsonl").is_file() and (run / "config.toml").is_file()
    assert not (out / "config.toml").exists() and not (out / "run.lock").exists()
    assert not list(out.glob("**/checkpoints/*")), "profiling writes no checkpoint"
    assert report["verdict"]["text"].split(":")[0] in result.output.replace("\n", " ")


def throttled_dataset(root):
    """A file list naming one 2048 px progressive 4:4:4 noise JPEG 16 times: a very slow image to decode."""
    from PIL import Image, ImageFile

    ImageFile.MAXBLOCK = 2 ** 26  # progressive JPEGs are written in one block
    (root / "a").mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "a" / "noise.jpg", quality=95, progressive=True, subsampling=0)
    (root / "list.txt").write_text("".join(f"a/noise.jpg {i % 2}\n" for i in range(16)))
    return root / "list.txt"


@pytest.mark.slow
def test_verdict_input_bound_when_loader_throttled(tmp_path, one_thread):
    data = throttled_dataset(tmp_path / "huge")
    config = load_config(None, CPU_RUN + [
        f"data.path={data}", "data.num_threads=1", "data.prefetch_queue_depth=1",
        "train.batch_size=4", "views.saliency_p=0", "views.num_large=1", "views.num_small=0", "views.large_size=16",
        "views.large_area=[0.9, 1.0]", "model.encoder=resnet18", "model.projector_hidden=16",
        "model.predictor_hidden=16", "model.embedding_dim=16"])
    report = profile_run(config, tmp_path / "run", QUICK)
    m = report["measurements"]
    assert report["verdict"]["bound"] == "input", report["verdict"]["text"]
    assert m["loader_images_per_s"] < m["consumption_images_per_s"] or \
        m["loop"]["summary"]["data_wait_share"] > WAIT_SHARE_LIMIT
    assert any("data.num_threads" in tip for tip in report["suggestions"])
    assert any("data.device = \"gpu\"" in tip for tip in report["suggestions"])


@pytest.mark.slow
def test_verdict_compute_bound_when_model_heavy(tiny_demo, tmp_path, one_thread):
    config = load_config(None, CPU_RUN + [
        f"data.path={tiny_demo}", "data.num_threads=2", "train.batch_size=4",
        "views.num_large=1", "views.num_small=0", "views.large_size=32", "views.jitter_p=0", "views.grayscale_p=0",
        "views.blur_p=[0.0]", "views.solarize_p=[0.0]", "views.saliency_p=0", "views.flip_p=0",
        "model.encoder=resnet50", "model.projector_hidden=4096", "model.predictor_hidden=4096"])
    report = profile_run(config, tmp_path / "run", QUICK)
    m = report["measurements"]
    assert report["verdict"]["bound"] == "compute", report["verdict"]["text"]
    assert m["loader_images_per_s"] > m["consumption_images_per_s"]
    assert any("headroom" in tip for tip in report["suggestions"])


def test_data_tax_fetches_one_batch_per_step(monkeypatch):
    """The data-tax pipeline runs at the loop's pace: one fetch before each step (warm-up included)."""
    from types import SimpleNamespace

    import relic_fast.profiler
    from relic_fast.profiler import synthetic_rate

    calls = []
    monkeypatch.setattr(relic_fast.profiler, "train_step", lambda *args: calls.append("step"))
    monkeypatch.setattr(relic_fast.profiler, "synthetic_inputs", lambda *args, **kwargs: None)
    trainer = SimpleNamespace(world=SimpleNamespace(device=torch.device("cpu")), context=None,
                              config=SimpleNamespace(views=ViewsConfig(),
                                                     train=SimpleNamespace(batch_size=4, channels_last=True)))
    assert synthetic_rate(trainer, 3, fetch=lambda: calls.append("fetch")) > 0
    assert calls == ["fetch", "step"] * 4
    calls.clear()
    synthetic_rate(trainer, 2)
    assert calls == ["step"] * 3
