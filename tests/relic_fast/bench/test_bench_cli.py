"""Tests of the `relic-fast bench` command group: it forwards to the benchmark modules' own parsers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from relic_fast.cli import app


def test_bench_group_lists_its_benchmarks():
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    assert "loader" in result.output and "loss" in result.output


def test_bench_loader_help_is_the_module_parser():
    result = CliRunner().invoke(app, ["bench", "loader", "--help"])
    assert result.exit_code == 0
    assert "usage: relic-fast bench loader" in result.output
    for option in ("--data", "--recipe", "--threads", "--batches", "--device", "--json", "--png"):
        assert option in result.output


def test_bench_loader_rejects_a_bad_recipe_before_measuring():
    result = CliRunner().invoke(app, ["bench", "loader", "--recipe", "4X"])
    assert result.exit_code == 2
    assert "recipe '4X'" in result.output


def test_bench_loss_tiny_run_writes_json(tmp_path):
    path = tmp_path / "loss.json"
    args = ["bench", "loss", "--batch-sizes", "8", "--dim", "16", "--implementations", "reference",
            "--device", "cpu", "--warmup", "1", "--repeats", "2", "--json", str(path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(path.read_text())
    assert payload["command"].startswith("relic-fast bench loss")
    (row,) = payload["results"]
    assert row["bench"] == "loss" and row["pipeline"] == "reference" and row["ms"] > 0
