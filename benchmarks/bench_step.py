"""Script entry of `relic_fast.bench.step` (what `relic-fast bench` runs): Training-step throughput: eager vs compiled, channels-last vs contiguous, fp32 vs bf16 autocast."""

from relic_fast.bench.step import main

if __name__ == "__main__":
    main()
