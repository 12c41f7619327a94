"""`python -m benchmarks.bench NAME [options]` is `relic-fast bench NAME [options]`, for every registered benchmark
(`relic_fast.bench.registry`), a new one included: no script of its own is needed."""

from relic_fast.bench.registry import script_main

if __name__ == "__main__":
    script_main()
