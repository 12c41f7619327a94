"""Script entry of `relic_fast.bench.memory` (what `relic-fast bench` runs): Peak memory of one training step, with and without activation checkpointing, per batch size."""

from relic_fast.bench.memory import main

if __name__ == "__main__":
    main()
