"""`python -m benchmarks.bench_all [options]` runs `relic-fast bench all` (`relic_fast.bench.registry`)."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main("all")
