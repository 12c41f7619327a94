"""`python -m benchmarks.bench_train [options]` runs `relic-fast bench train` (`relic_fast.bench.registry`)."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main("train")
