"""`python -m benchmarks.bench_loss [options]` runs `relic-fast bench loss` (`relic_fast.bench.registry`)."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main("loss")
