"""Tests of the loader benchmark: recipe parsing and a tiny end-to-end run through `relic-fast bench loader`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from relic_fast.bench.loader import parse_recipe
from relic_fast.bench.corpus import make_photo_corpus
from relic_fast.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text, expected", [("2L", (2, 0)), ("4L+2S", (4, 2)), ("2l + 6s", (2, 6))])
def test_parse_recipe(text, expected):
    assert parse_recipe(text) == expected


@pytest.mark.parametrize("text", ["0L+2S", "2S", "4L+", "L+S", "4L2S"])
def test_parse_recipe_rejects_malformed(text):
    with pytest.raises(ValueError, match="recipe"):
        parse_recipe(text)


def test_bench_loader_tiny_run_writes_json_and_chart(tmp_path):
    data = make_photo_corpus(tmp_path / "corpus", count=8, seed=0)
    json_path, png_path = tmp_path / "loader.json", tmp_path / "loader.png"
    args = ["bench", "loader", "--data", str(data), "--recipe", "2L", "1L+1S", "--threads", "1",
            "--batch-size", "4", "--batches", "1", "--repeats", "2", "--warmup", "1", "--device", "cpu",
            "--large-size", "32", "--small-size", "16", "--json", str(json_path), "--png", str(png_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert set(payload) == {"command", "machine", "results", "provenance"}
    assert payload["command"].startswith("relic-fast bench loader --data")
    rows = payload["results"]
    assert sorted((r["pipeline"], r["recipe"]) for r in rows) == [
        ("dali-cpu", "1L+1S"), ("dali-cpu", "2L"), ("decode-only", ""),
        ("torchvision", "1L+1S"), ("torchvision", "2L")]
    for row in rows:
        assert row["threads"] == 1 and row["images_per_s"] > 0 and row["batch_size"] == 4
        assert row["cpu_ms_per_image"] > 0
    dali = [r for r in rows if r["pipeline"] == "dali-cpu"]
    for row in dali:
        torchvision = next(r for r in rows if r["pipeline"] == "torchvision" and r["recipe"] == row["recipe"])
        assert row["ratios"]["torchvision"] == pytest.approx(row["images_per_s"] / torchvision["images_per_s"])
        assert "decode-only" in row["ratios"] and "torchvision cpu" in row["ratios"]
        assert row["ratios"]["torchvision cpu"] == pytest.approx(
            torchvision["cpu_ms_per_image"] / row["cpu_ms_per_image"])
    assert {r["views"] for r in dali} == {"2x32", "1x32+1x16"}
    for row in dali:  # the graphs' operators, by kind, next to the rates
        assert row["operators"] == {device: sum(kinds.values()) for device, kinds in row["operators_by_kind"].items()}
        assert set(row["operators"]) == {"cpu", "gpu"} and row["operators_by_kind"]["cpu"]["Uniform"] == 1
    assert "operators" in result.output and "Uniform" in result.output  # the kinds table
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE
