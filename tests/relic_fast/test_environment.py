"""What the environment module reports and sets: process age, compiled-graph counts, CUDA math settings."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from relic_fast.environment import compiled_graph_count, configure_cuda_math, process_age_s


def test_process_age_counts_from_process_start():
    code = "import time; time.sleep(1.0); from relic_fast.environment import process_age_s; print(process_age_s())"
    started = time.perf_counter()
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.0 <= age <= time.perf_counter() - started + 0.05  # the sleep before the import is counted
    assert process_age_s() > age  # this pytest process started before that child


def test_compiled_graph_count_rises_with_each_new_shape():
    double = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
    before = compiled_graph_count()
    double(torch.ones(3))
    double(torch.ones(3))
    assert compiled_graph_count() == before + 1  # the second call reuses the graph
    double(torch.ones(5))
    assert compiled_graph_count() == before + 2  # a new static shape is a recompilation


def test_cuda_math_settings_apply_to_cuda_devices_only():
    precision, benchmark = torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark
    try:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.benchmark = False
        configure_cuda_math(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.benchmark
        configure_cuda_math("cuda:0")  # flags only: no GPU needed to set them
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.benchmark
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark = benchmark
