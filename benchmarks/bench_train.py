"""Script entry of `relic_fast.bench.train` (what `relic-fast bench` runs): End-to-end training throughput: the real trainer (`relic-fast pretrain`'s loop) fed three ways."""

from relic_fast.bench.train import main

if __name__ == "__main__":
    main()
