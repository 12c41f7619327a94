"""`relic-fast selftest`: passes on this CPU, fails (non-zero exit) when a fast path is perturbed.

The CLI runs in-process, so the compiled step of the passing run is still in torch.compile's cache
when the perturbed run compiles the same function again (minutes saved on 2 cores).
"""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from relic_fast.cli import app
from relic_fast.config import DataConfig, ViewsConfig
from relic_fast.selftest import (CHECKS, MAX_Z, CheckResult, compare_pipelines, exit_code, judge, relative_error,
                                 statistic_z_scores)


def test_judge_compares_each_error_with_its_tolerance():
    passed = judge("x", {"float32:loss a": 1e-6, "bfloat16:grad b": 1e-2}, {"float32": 1e-4, "bfloat16": 2e-2}, 1.0, "w")
    assert passed.status == "pass" and "bfloat16:grad b" in passed.detail  # the worst relative to its tolerance
    failed = judge("x", {"loss": 0.5, "update": 0.01}, {"loss": 0.03, "update": 0.1}, 1.0, "w")
    assert failed.status == "fail" and "loss = 0.5 > 0.03" in failed.detail and "update" not in failed.detail
    assert judge("x", {"loss": math.nan}, {"loss": 1.0}, 1.0, "w").status == "fail"
    assert relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    skip = CheckResult("pipeline-statistics", "skip", "no GPU")
    assert exit_code([skip, passed]) == 0 and exit_code([skip, passed, failed]) == 1


def test_z_scores_flag_a_shifted_statistic():
    gen = torch.Generator().manual_seed(0)
    a = {"large mean": torch.rand(200, 3, generator=gen) * 255, "large gray": (torch.rand(200, 1, generator=gen) < 0.2).float()}
    b = {"large mean": torch.rand(200, 3, generator=gen) * 255, "large gray": (torch.rand(200, 1, generator=gen) < 0.2).float()}
    same = statistic_z_scores(a, b)
    assert set(same) == {"large mean R", "large mean G", "large mean B", "large gray"}
    assert max(same.values()) < MAX_Z
    assert max(statistic_z_scores(a, b, perturb=0.5).values()) > MAX_Z


def test_pipeline_statistics_of_two_cpu_pipelines_agree(tiny_demo):
    """The GPU check's comparison, run CPU vs CPU (two seeds): same recipe, statistics within MAX_Z."""
    from dali_pipelines.dataset import resolve_dataset

    dataset = resolve_dataset(str(tiny_demo))
    views = ViewsConfig(num_large=2, num_small=1, large_size=32, small_size=16)
    kwargs = dict(device_ids=(None, None), batches=6, batch_size=8, seeds=(0, 1))
    z = compare_pipelines(dataset, views, DataConfig(num_threads=2), **kwargs)
    assert {"large mean R", "large std B", "large gray", "small mean G", "small gray"} <= set(z)
    assert max(z.values()) < MAX_Z, z
    assert max(compare_pipelines(dataset, views, DataConfig(num_threads=2), perturb=0.5, **kwargs).values()) > MAX_Z


@pytest.mark.slow
def test_selftest_passes_on_cpu_and_exits_zero(one_thread):
    result = CliRunner().invoke(app, ["selftest", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = {name: next(line for line in result.output.splitlines() if f"│ {name} " in line) for name in CHECKS}
    assert "skip" in lines["pipeline-statistics"]
    assert "pass" in lines["fused-loss"] and "pass" in lines["compiled-step"]


@pytest.mark.slow
def test_selftest_fails_when_the_fast_path_is_perturbed(one_thread):
    result = CliRunner().invoke(app, ["selftest", "--device", "cpu", "--only", "compiled-step", "--perturb", "0.5"])
    assert result.exit_code == 1, result.output
    assert "fail" in result.output and "loss" in result.output


def test_selftest_rejects_unknown_check_and_missing_gpu():
    assert CliRunner().invoke(app, ["selftest", "--only", "nonsense"]).exit_code == 2
    if not torch.cuda.is_available():
        assert CliRunner().invoke(app, ["selftest", "--device", "gpu"]).exit_code == 2
