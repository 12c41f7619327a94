"""The benchmark registry and the one harness main: every benchmark is a `Benchmark` named once, the CLI and
the `benchmarks/` scripts read the registry, and the shared primitives (device sync, peak memory, endless
batches, quartiles) have one definition each."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
from typer.testing import CliRunner

from relic_fast.bench import registry
from relic_fast.bench.benchmark import Benchmark, Report, UsageError
from relic_fast.bench.harness import measure
from relic_fast.cli import app
from relic_fast.environment import endless, peak_memory_gib, reset_peak_memory, synchronize

from tests.support import REPO


def test_every_registered_benchmark_is_one_benchmark_object():
    names = [entry.name for entry in registry.REGISTRY]
    assert len(names) == len(set(names)), "each name registered once"
    for name in names:
        assert isinstance(registry.load(name), Benchmark), name
    with pytest.raises(ValueError, match="no benchmark 'nope'"):
        registry.registered("nope")


def test_the_cli_lists_exactly_the_registry():
    result = CliRunner().invoke(app, ["bench", "--help"])
    assert result.exit_code == 0
    for entry in registry.REGISTRY:
        assert entry.name in result.output


def test_every_benchmark_script_names_a_registered_benchmark():
    names = {entry.name for entry in registry.REGISTRY}
    for script in (REPO / "benchmarks").glob("bench_*.py"):
        (called,) = re.findall(r'script_main\("([^"]+)"\)', script.read_text())
        assert called in names and script.stem == f"bench_{called}", script.name


def toy_benchmark() -> Benchmark:
    """A benchmark as a new module would define it: options, a run returning rows, nothing else."""

    def add_arguments(parser):
        parser.add_argument("--size", type=int, default=8)

    def run(args, console):
        if args.size < 1:
            raise UsageError("--size must be >= 1")
        row = measure(bench="toy", pipeline="sum", fn=lambda: sum(range(args.size)), items=args.size,
                      warmup=1, repeats=3)
        return Report([row], title=f"toy, size {args.size}")

    return Benchmark(description="A toy benchmark.\n\nMore words.", add_arguments=add_arguments, run=run,
                     chart_title="toy images/s")


@pytest.fixture
def toy_registered(monkeypatch):
    module = types.ModuleType("relic_fast.bench.toy_for_tests")
    module.BENCHMARK = toy_benchmark()
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(registry, "REGISTRY",
                        (*registry.REGISTRY, registry.Registered("toy-for-tests", "toy_for_tests", "A toy benchmark.")))


def test_a_registered_benchmark_gets_the_shared_options_table_and_json(toy_registered, tmp_path, capsys):
    json_path, png_path = tmp_path / "toy.json", tmp_path / "toy.png"
    argv = ["--size", "4", "--json", str(json_path), "--png", str(png_path)]
    rows = registry.run("toy-for-tests", argv, prog="test toy")
    out = capsys.readouterr().out
    assert "toy, size 4" in out and "images/s median [IQR]" in out
    payload = json.loads(json_path.read_text())
    assert payload["command"] == f"test toy --size 4 --json {json_path} --png {png_path}"
    (row,) = payload["results"]
    assert row["bench"] == "toy" and row["repeats"] == 3 and row["images_per_s"] == pytest.approx(rows[0].images_per_s)
    assert png_path.stat().st_size > 0


def test_a_usage_error_exits_like_argparse(toy_registered, capsys):
    with pytest.raises(SystemExit) as stopped:
        registry.run("toy-for-tests", ["--size", "0"], prog="test toy")
    assert stopped.value.code == 2
    assert "--size must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        registry.run("toy-for-tests", ["--help"], prog="test toy")
    assert "A toy benchmark." in capsys.readouterr().out


def test_the_generic_script_runs_any_registered_benchmark(toy_registered, monkeypatch, tmp_path):
    json_path = tmp_path / "toy.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "toy-for-tests", "--json", str(json_path)])
    registry.script_main()
    assert json.loads(json_path.read_text())["command"].startswith("python -m benchmarks.bench toy-for-tests --json")
    monkeypatch.setattr(sys, "argv", ["bench.py", "nope"])
    with pytest.raises(SystemExit, match="no benchmark 'nope'"):
        registry.script_main()


def test_device_primitives_on_cpu_and_endless_batches():
    synchronize("cpu")  # returns at once: nothing queued on a CPU
    reset_peak_memory("cpu")
    assert peak_memory_gib("cpu") is None
    batches = endless([1, 2, 3])
    assert [next(batches) for _ in range(7)] == [1, 2, 3, 1, 2, 3, 1]


ONE_DEFINITION = {
    r"torch\.cuda\.synchronize\(": "relic_fast/environment.py",
    r"max_memory_allocated\(": "relic_fast/environment.py",
    r"reset_peak_memory_stats\(": "relic_fast/environment.py",
    r"def endless\(": "relic_fast/environment.py",
    r"statistics\.quantiles\(": "relic_fast/bench/harness.py",
}


@pytest.mark.parametrize("pattern, home", ONE_DEFINITION.items())
def test_the_profiler_and_the_benchmarks_share_one_definition(pattern, home):
    files = [REPO / "relic_fast" / "profiler.py", *sorted((REPO / "relic_fast" / "bench").glob("*.py"))]
    users = [str(path.relative_to(REPO)) for path in files
             if path != REPO / home and re.search(pattern, path.read_text())]
    assert users == [], f"{pattern} belongs in {home} only; found in {users}"
    assert re.search(pattern, (REPO / home).read_text())
