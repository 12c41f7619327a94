"""The benchmarks the CLI runs (`relic-fast bench ...`): each prints a table and writes JSON (+ PNG).

`benchmarks/` at the repository root keeps the scripts (`python -m benchmarks.bench_step`, ...), the
GPU proof driver and the results; the code they run lives here, inside the installed package.
"""
