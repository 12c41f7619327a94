"""Tests of the benchmark infrastructure: the harness, the photo corpus and the torchvision baseline."""

from __future__ import annotations

import json

import pytest
import torch

from relic_fast.bench.harness import (Result, Timing, add_ratios, measure, plot_images_per_s, print_table,
                                      quartiles, time_it, write_json)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_time_it_counts_warmup_and_repeats_and_orders_statistics():
    calls = []
    timing = time_it(lambda: calls.append(1), warmup=3, repeats=5, sync=lambda: calls.append(0))
    assert calls.count(1) == 8, "warm-up calls plus timed calls"
    assert len(timing.seconds) == 5
    assert timing.min <= timing.quartiles[0] <= timing.median <= timing.quartiles[1] <= timing.max
    assert timing.iqr >= 0


def test_timing_statistics_on_known_seconds():
    timing = Timing((4.0, 1.0, 3.0, 2.0, 100.0))
    assert timing.median == 3.0 and timing.min == 1.0 and timing.max == 100.0
    assert timing.quartiles == (2.0, 4.0)  # the slow outlier moves neither median nor IQR


def test_quartiles_interpolate_linearly_between_order_statistics():
    """One rule for every spread: numpy's default (linear) = statistics' "inclusive" method."""
    np = pytest.importorskip("numpy")
    sample = [4.0, 1.0, 3.0, 2.0, 100.0]
    assert quartiles(sample) == (2.0, 4.0)  # the "exclusive" method would give (1.5, 52.0)
    assert quartiles([1.0, 3.0]) == (1.5, 2.5)
    assert quartiles([10.0, 20.0, 40.0]) == (15.0, 30.0)
    assert quartiles([7.0]) == (7.0, 7.0)
    for values in (sample, [1.0, 3.0], [10.0, 20.0, 40.0], [0.5, 9.0, 2.0, 2.5, 7.0, 3.0]):
        assert quartiles(values) == pytest.approx(tuple(np.percentile(values, [25, 75])))
    with pytest.raises(ValueError):
        quartiles([])


def test_every_benchmark_row_spreads_by_the_same_rule():
    """The timed rows (`measure`, via `Timing`) and the train benchmark's rate rows agree on one sample."""
    from relic_fast.bench.train import rate_row

    rates = [10.0, 40.0, 20.0, 30.0]
    assert rate_row("x", rates, batch=1, recipe="", extra={}).images_per_s_spread == quartiles(rates) == (17.5, 32.5)
    assert Timing(tuple(rates)).quartiles == quartiles(rates)


def test_time_it_rejects_no_repeats():
    with pytest.raises(ValueError):
        time_it(lambda: None, warmup=0, repeats=0)


def test_measure_turns_items_into_rates():
    row = measure(bench="loss", pipeline="sleep", fn=lambda: torch.ones(64).sum(), items=32,
                  warmup=1, repeats=4, recipe="tiny", batch_size=32)
    assert row.images_per_s == pytest.approx(32 / (row.ms / 1e3))
    low, high = row.images_per_s_spread
    assert low <= row.images_per_s <= high
    assert row.repeats == 4 and row.recipe == "tiny"


def test_add_ratios_matches_rows_on_recipe_and_threads():
    rows = [Result("loader", "torchvision", "2L", 2, images_per_s=10.0),
            Result("loader", "dali-cpu", "2L", 2, images_per_s=35.0),
            Result("loader", "dali-cpu", "4L", 2, images_per_s=20.0),
            Result("loss", "fused", ms=2.0), Result("loss", "reference", ms=8.0)]
    rows = add_ratios(rows, baseline="torchvision")
    assert rows[1].ratios == {"torchvision": 3.5}
    assert rows[2].ratios == {}, "no torchvision row for 4L"
    assert rows[0].ratios == {}
    timed = add_ratios(rows, baseline="reference", match=("bench",))
    assert timed[3].ratios == {"reference": pytest.approx(4.0)}, "ms-only rows: speed-up from time"


def test_cpu_ratio_compares_cpu_cost_per_image():
    rows = [Result("loader", "torchvision", "2L", 2, images_per_s=10.0, cpu_ms_per_image=200.0),
            Result("loader", "dali-cpu", "2L", 2, images_per_s=20.0, cpu_ms_per_image=50.0),
            Result("loader", "dali-cpu", "2L", 2, images_per_s=20.0)]
    rows = add_ratios(rows, baseline="torchvision", metric="cpu")
    assert rows[1].ratios == {"torchvision cpu": 4.0}
    assert rows[2].ratios == {}, "no CPU figure, no CPU ratio"


def test_time_it_counts_cpu_seconds_of_busy_work():
    # ~0.1 s of work per repeat: well above /proc's 10 ms accounting tick, which a shorter task can miss
    timing = time_it(lambda: sum(i * i for i in range(1_500_000)), warmup=0, repeats=3, count_cpu=True)
    assert len(timing.cpu_seconds) == 3
    assert all(cpu > 0 for cpu in timing.cpu_seconds), "pure-Python work costs CPU time"
    assert time_it(lambda: None, warmup=0, repeats=1).cpu_seconds is None


def test_json_table_and_chart_from_a_tiny_run(tmp_path, capsys):
    rows = [measure(bench="loader", pipeline=name, fn=lambda n=n: torch.randn(n, n).sum(), items=8,
                    warmup=1, repeats=4, recipe="2L", threads=1, extra={"device": "cpu"})
            for name, n in (("slow", 200), ("fast", 20))]
    rows = add_ratios(rows, baseline="slow")
    print_table(rows, "tiny")
    assert "x slow" in capsys.readouterr().out
    path = write_json(tmp_path / "out" / "bench.json", rows, command="pytest tiny")
    payload = json.loads(path.read_text())
    assert set(payload) == {"command", "machine", "results", "provenance"}
    assert {"commit", "dirty", "uncommitted"} <= set(payload["provenance"]["git"])  # relic_fast.provenance
    assert payload["command"] == "pytest tiny"
    for key in ("torch", "dali", "commit", "date", "cpu", "gpu", "load_average", "uncommitted"):
        assert key in payload["machine"]
    first, second = payload["results"]
    for key in ("bench", "pipeline", "recipe", "threads", "images_per_s", "images_per_s_spread", "ms",
                "peak_gib", "ratios", "device"):
        assert key in first
    assert second["ratios"]["slow"] == pytest.approx(second["images_per_s"] / first["images_per_s"])
    png = plot_images_per_s(rows, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 1000


def test_plot_refuses_rows_without_rates(tmp_path):
    with pytest.raises(ValueError):
        plot_images_per_s([Result("loss", "fused", ms=1.0)], tmp_path / "x.png")
