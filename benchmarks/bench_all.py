"""Script entry of `relic_fast.bench.suite` (what `relic-fast bench` runs): All throughput benchmarks into one folder: loader, training step and loss (JSON + PNG each), and a summary."""

from relic_fast.bench.suite import main

if __name__ == "__main__":
    main()
