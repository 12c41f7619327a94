"""`python -m benchmarks.bench_memory [options]` runs `relic-fast bench memory` (`relic_fast.bench.registry`)."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main("memory")
