"""`python -m benchmarks.bench_loader [options]` runs `relic-fast bench loader` (`relic_fast.bench.registry`)."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main("loader")
