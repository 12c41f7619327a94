"""The memory benchmark: the CPU peak read from the profiler's allocation events, the per-image slopes, and a
tiny end-to-end run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from relic_fast.bench.memory import add_slopes, cpu_step_peak_bytes
from relic_fast.bench.harness import Result
from relic_fast.cli import app

MIB = 2**20


def test_cpu_peak_counts_what_the_step_allocates_at_once_not_what_lived_before():
    before = [torch.ones(64 * MIB, dtype=torch.uint8)]  # alive before the step, freed by it (as old gradients are)

    def step():
        before.pop()  # not reported: the profiler saw no allocation of it
        a = torch.ones(16 * MIB, dtype=torch.uint8)
        b = a + 1  # a and b alive together: 32 MiB
        del a
        return b + 1  # b and the result: 32 MiB again, never 48

    assert cpu_step_peak_bytes(step) == pytest.approx(32 * MIB, abs=1024)  # + a few bytes of scalar operands


def test_slopes_cancel_fixed_costs_and_give_the_kept_fraction():
    rows = [Result(bench="memory", pipeline=variant, batch_size=batch, extra={"step_gib": (fixed + per_image * batch) / 1024})
            for variant, fixed, per_image in (("plain", 300.0, 400.0), ("checkpointed", 300.0, 220.0))
            for batch in (2, 4, 6)]
    out = add_slopes(rows)
    assert [r.extra["per_image_mib"] for r in out] == pytest.approx([400.0] * 3 + [220.0] * 3)
    assert all(r.extra["ratio"] == pytest.approx(0.55) for r in out)
    assert "ratio" not in add_slopes(rows[:3])[0].extra  # one variant only: no ratio


def test_tiny_memory_benchmark_writes_json(tmp_path, one_thread):
    json_path = tmp_path / "memory.json"
    result = CliRunner().invoke(app, ["bench", "memory", "--device", "cpu", "--encoder", "resnet18", "--views", "1L+1S",
                                      "--large-size", "32", "--small-size", "16", "--batch-sizes", "2", "4",
                                      "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert payload["command"].startswith("relic-fast bench memory")
    rows = payload["results"]
    assert [(r["pipeline"], r["batch_size"]) for r in rows] == [("plain", 2), ("checkpointed", 2), ("plain", 4),
                                                                ("checkpointed", 4)]
    for row in rows:
        assert row["bench"] == "memory" and row["recipe"] == "1x32+1x16" and row["precision"] == "fp32"
        assert 0 < row["static_gib"] < row["peak_gib"] and row["step_gib"] > 0 and "per_image_mib" in row
        assert row["peak_gib"] == pytest.approx(row["static_gib"] + row["step_gib"])
