"""`python -m benchmarks.bench_step [options]` runs `relic-fast bench step` (`relic_fast.bench.registry`)."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main("step")
