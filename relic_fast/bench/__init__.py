"""The benchmarks the CLI runs (`relic-fast bench ...`): each prints a table and writes JSON (+ PNG).

Each benchmark is one `benchmark.Benchmark` object (its options, its run, its rows) in its own module,
named once in `registry.REGISTRY`; `Benchmark.main` is the one main all of them run through, and
`harness` holds the measuring and reporting every benchmark shares. `benchmarks/` at the repository root
keeps the scripts (`python -m benchmarks.bench NAME`, `python -m benchmarks.bench_step`, ...), the GPU
proof driver and the results; the code they run lives here, inside the installed package.
"""
