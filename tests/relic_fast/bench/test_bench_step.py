"""The step benchmark: variant parsing, device defaults, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from relic_fast.bench.step import (ALL_VARIANTS, BASELINE, BENCHMARK, DEFAULT_VARIANTS, bench_from_args,
                                   defaults_for, parse_variant)
from relic_fast.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_variants_cover_every_combination_once():
    assert len(set(ALL_VARIANTS)) == 8
    assert all(BASELINE in variants and set(variants) <= set(ALL_VARIANTS) for variants in DEFAULT_VARIANTS.values())
    assert parse_variant("compiled-bf16-channels-last") == (True, "bf16", True)
    assert parse_variant(BASELINE) == (False, "fp32", False)
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variant("compiled-fp16-contiguous")


def test_device_defaults_and_overrides():
    gpu = defaults_for("cuda")
    assert (gpu.encoder, gpu.views, gpu.large_size, gpu.small_size, gpu.batch_size) == ("resnet50", "4L+2S", 224, 96, 128)
    cpu = defaults_for("cpu")
    assert (cpu.encoder, cpu.views, cpu.large_size, cpu.small_size, cpu.batch_size) == ("resnet18", "2L+2S", 64, 32, 16)
    assert "compiled-bf16-channels-last" in gpu.variants and "compiled-fp32-channels-last" in cpu.variants
    args = BENCHMARK.build_parser("test").parse_args(["--device", "cpu", "--batch-size", "4", "--variants", "all"])
    bench = bench_from_args(args)
    assert bench.batch_size == 4 and bench.encoder == "resnet18" and bench.variants == ALL_VARIANTS
    with pytest.raises(ValueError, match="recipe"):
        bench_from_args(BENCHMARK.build_parser("test").parse_args(["--device", "cpu", "--views", "4X"]))


def test_tiny_step_benchmark_writes_json_and_chart(tmp_path, one_thread):
    json_path, png_path = tmp_path / "step.json", tmp_path / "step.png"
    result = CliRunner().invoke(app, [
        "bench", "step", "--device", "cpu", "--encoder", "resnet18", "--views", "1L+1S", "--large-size", "16",
        "--small-size", "8", "--batch-size", "4", "--projector-hidden", "32", "--predictor-hidden", "32",
        "--variants", BASELINE, "eager-fp32-channels-last", "--warmup", "1", "--repeats", "2",
        "--json", str(json_path), "--png", str(png_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert payload["command"].startswith("relic-fast bench step") and "--batch-size 4" in payload["command"]
    assert payload["machine"]["torch"] == torch.__version__ and payload["machine"]["cpus"] >= 1
    rows = {row["pipeline"]: row for row in payload["results"]}
    assert set(rows) == {BASELINE, "eager-fp32-channels-last"}
    for row in rows.values():
        assert row["bench"] == "step" and row["recipe"] == "1x16+1x8" and row["batch_size"] == 4
        assert row["repeats"] == 2 and row["images_per_s"] > 0 and row["first_step_s"] > 0
        low, high = row["images_per_s_spread"]
        assert low <= row["images_per_s"] <= high
        assert row["images_per_s"] == pytest.approx(4 / (row["ms"] / 1e3))
    cl = rows["eager-fp32-channels-last"]
    assert cl["channels_last"] is True and cl["precision"] == "fp32" and cl["compiled"] is False
    assert cl["ratios"][BASELINE] == pytest.approx(cl["images_per_s"] / rows[BASELINE]["images_per_s"])
    assert rows[BASELINE]["ratios"] == {}
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


def test_bench_all_runs_the_loader_on_the_step_recipe_and_compares_them(tmp_path):
    from relic_fast.bench.suite import loader_args, summary
    from relic_fast.bench.harness import Result

    args = loader_args(defaults_for("cuda"), "/data", tmp_path)
    assert args[args.index("--recipe") + 1] == "4L+2S" and args[args.index("--batch-size") + 1] == "128"
    assert args[args.index("--device") + 1] == "gpu" and args[args.index("--data") + 1] == "/data"
    assert args[args.index("--json") + 1] == str(tmp_path / "loader.json")
    loader = [Result("loader", "torchvision", images_per_s=50.0), Result("loader", "dali-cpu", images_per_s=120.0)]
    step = [Result("step", BASELINE, images_per_s=80.0), Result("step", "compiled-fp32-channels-last", images_per_s=200.0)]
    head = summary(loader, step, [])
    assert head["loader"]["pipeline"] == "dali-cpu" and head["step"]["pipeline"] == "compiled-fp32-channels-last"
    assert head["bound"] == "input" and head["loader_over_step"] == pytest.approx(0.6)
    assert summary(loader, step[:1], [])["bound"] == "compute"
