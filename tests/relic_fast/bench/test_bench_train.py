"""`relic-fast bench train`: the real trainer fed by DALI, synthetic views and torchvision, with its warm-up;
and the saliency option of `bench loader` (which needs masks)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from relic_fast.environment import process_age_s
from relic_fast.bench.train import BASELINE, loop_row
from relic_fast.bench.corpus import make_photo_corpus
from relic_fast.cli import app

from tests.support import REPO

DEMO_RECIPE = REPO / "configs" / "demo_cpu.toml"
TINY = ["model.encoder=resnet18", "model.small_stem=true", "model.projector_hidden=64", "model.embedding_dim=32",
        "model.predictor_hidden=64", "views.num_large=2", "views.num_small=1", "views.large_size=32",
        "views.small_size=16", "views.saliency_p=0", "data.device=cpu", "data.num_threads=1", "train.batch_size=4", "train.device=cpu",
        "train.compile=off", "train.precision=fp32", "loss.implementation=reference"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_photo_corpus(tmp_path_factory.mktemp("corpus"), count=16, seed=0)


def test_loop_row_drops_nothing_it_is_given_and_takes_the_median():
    records = [{"images_per_s": rate, "data_wait_pct": wait} for rate, wait in ((10.0, 4.0), (30.0, 0.0), (20.0, 2.0))]
    row = loop_row("trainer + dali-cpu", records, batch=8, recipe="2x32")
    assert row.images_per_s == 20.0 and row.repeats == 3 and row.ms == pytest.approx(400.0)
    assert row.extra["data_wait_pct"] == pytest.approx(2.0)
    with pytest.raises(RuntimeError, match="no steady window"):
        loop_row("trainer + dali-cpu", [], batch=8, recipe="2x32")


@pytest.mark.slow
def test_bench_train_measures_every_feed_against_synthetic_views(corpus, tmp_path):
    json_path, run = tmp_path / "train.json", tmp_path / "run"
    args = ["bench", "train", "--config", str(DEMO_RECIPE), "--data", str(corpus), "--window", "1",
            "--windows", "2", "--synthetic-steps", "1", "--synthetic-repeats", "2", "--feeds", "dali", "synthetic",
            "torchvision", "--torchvision-workers", "1", "--out", str(run), "--json", str(json_path)]
    for key in TINY:
        args += ["--set", key]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(json_path.read_text())
    assert payload["command"].startswith("relic-fast bench train --config")
    rows = {row["pipeline"]: row for row in payload["results"]}
    assert set(rows) == {"trainer + dali-cpu", BASELINE, "trainer + torchvision", "compile warm-up"}
    for name in ("trainer + dali-cpu", "trainer + torchvision"):
        assert rows[name]["images_per_s"] > 0 and 0.0 <= rows[name]["data_wait_pct"] <= 100.0
        assert rows[name]["ratios"][BASELINE] == pytest.approx(rows[name]["images_per_s"] / rows[BASELINE]["images_per_s"])
    assert rows["trainer + dali-cpu"]["repeats"] == 2  # the first (start-up) window is dropped
    assert rows["trainer + torchvision"]["repeats"] == 1
    warmup = rows["compile warm-up"]
    # first_step_s counts from this process's start (here: pytest's), so it is bounded by the process age
    assert 0.0 < warmup["seconds"] <= process_age_s() and warmup["ms"] == pytest.approx(1e3 * warmup["seconds"])
    assert warmup["recompiles_after_first_step"] == 0  # train.compile=off: nothing compiles after step 1
    assert all(row["recipe"] == "2x32+1x16" and row["encoder"] == "resnet18 1x" for row in rows.values())
    # the trainer's own log holds the windows the rows came from, with the warm-up fields
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert all(r["first_step_s"] == pytest.approx(warmup["seconds"]) and r["recompiles"] == 0 for r in records)


def test_bench_train_rejects_a_bad_config_key(corpus):
    result = CliRunner().invoke(app, ["bench", "train", "--data", str(corpus), "--set", "train.batchsize=4"])
    assert result.exit_code != 0
    assert "train.batchsize" in result.output


def test_bench_loader_saliency_needs_masks_then_blends(corpus, tmp_path):
    base = ["bench", "loader", "--data", str(corpus), "--recipe", "1L+1S", "--threads", "1", "--batch-size", "4",
            "--batches", "1", "--repeats", "1", "--warmup", "1", "--device", "cpu", "--pipelines", "dali",
            "--large-size", "32", "--small-size", "16", "--saliency-p", "0.5"]
    missing = CliRunner().invoke(app, base)
    assert missing.exit_code != 0
    assert "relic-fast masks" in str(missing.exception) + missing.output
    masks = tmp_path / "masks"
    assert CliRunner().invoke(app, ["masks", str(corpus), "--out", str(masks), "--device", "cpu"]).exit_code == 0
    json_path = tmp_path / "loader.json"
    result = CliRunner().invoke(app, base + ["--masks", str(masks), "--json", str(json_path)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(json_path.read_text())["results"]
    assert row["pipeline"] == "dali-cpu" and row["saliency_p"] == 0.5 and row["images_per_s"] > 0
