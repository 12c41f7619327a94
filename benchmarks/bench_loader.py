"""Script entry of `relic_fast.bench.loader` (what `relic-fast bench` runs): Loader throughput: the DALI RELICv2 pipeline against torchvision + PIL and against the decode ceiling."""

from relic_fast.bench.loader import main

if __name__ == "__main__":
    main()
