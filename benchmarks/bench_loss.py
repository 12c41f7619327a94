"""Script entry of `relic_fast.bench.loss` (what `relic-fast bench` runs): Loss benchmark: the RELICv2 multi-view loss, forward + backward, per implementation and batch."""

from relic_fast.bench.loss import main

if __name__ == "__main__":
    main()
