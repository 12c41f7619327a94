"""Script entry of `relic_fast.bench.corpus` (what `relic-fast bench` runs): A benchmark corpus of real-sized JPEGs cut from the real photographs shipped with scikit-image."""

from relic_fast.bench.corpus import main

if __name__ == "__main__":
    main()
