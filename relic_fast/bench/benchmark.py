"""What a benchmark is (`Benchmark`: its options, its run, its rows) and the one `main` that runs any of them.

A benchmark module defines `BENCHMARK = Benchmark(...)` and is named once in `relic_fast.bench.registry`;
`relic-fast bench NAME`, `python -m benchmarks.bench NAME` and the `benchmarks/bench_NAME.py` scripts all
go through `Benchmark.main`, which owns what every benchmark shares: the argparse parser with its
`--json` (and, for benchmarks with a chart, `--png`) options, the console, the table, the JSON with the
machine and command beside the rows, and the chart. A benchmark only adds its own options and measures:

    def add_arguments(parser):
        parser.add_argument("--size", type=int, default=64)

    def run(args, console) -> Report:
        row = measure(bench="toy", pipeline="sum", fn=..., items=args.size, warmup=1, repeats=5)
        return Report([row], title=f"toy, size {args.size}")

    BENCHMARK = Benchmark(description=__doc__, add_arguments=add_arguments, run=run)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from relic_fast.bench.harness import Result, command_line, print_table, save_outputs


class UsageError(ValueError):
    """A bad option value found by a benchmark's `run` before it measures anything: `main` reports it
    as argparse does (the usage line and exit code 2), not as a traceback."""


@dataclass(frozen=True)
class Report:
    """What one run of a benchmark measured: its rows and the title of their table."""

    rows: list[Result]
    title: str


def show_table(report: Report, console: Any) -> None:
    """The default presentation: the harness table (median, spread, ratio columns) of the report's rows."""
    print_table(report.rows, report.title, console=console)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its options (`add_arguments`), its measurement (`run`) and how its rows are shown.

    `run(args, console)` gets the parsed options (plus `args.command_line`, the command as typed) and a
    console for progress lines, measures, and returns a `Report`; it raises `UsageError` for option
    values argparse cannot check. `chart_title`, when set, adds `--png` (a bar chart of the rows'
    images/s under that title); `json_option=False` leaves `--json` out (for a benchmark that writes its
    own files). `show` replaces the standard table where the rows need other columns.
    """

    description: str
    """The module's docstring: its first paragraph is the `--help` description."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], Report]
    chart_title: str | None = None
    json_option: bool = True
    show: Callable[[Report, Any], None] = show_table

    def build_parser(self, prog: str) -> argparse.ArgumentParser:
        """The benchmark's options followed by the shared output options (`--json`, `--png`)."""
        parser = argparse.ArgumentParser(prog=prog, description=self.description.split("\n\n")[0])
        self.add_arguments(parser)
        if self.json_option:
            parser.add_argument("--json", type=Path, help="write the rows, machine and command as JSON here")
        if self.chart_title is not None:
            parser.add_argument("--png", type=Path, help="write a bar chart of images/s here")
        return parser

    def main(self, argv: Sequence[str] | None = None, prog: str = "relic-fast bench") -> list[Result]:
        """Parse `argv` (default: the process's arguments), run, show the rows and write the files asked for."""
        from rich.console import Console

        parser = self.build_parser(prog)
        args = parser.parse_args(argv)
        args.command_line = command_line(prog, argv)  # for the JSON, and for a benchmark that writes files of its own
        console = Console(width=None if sys.stdout.isatty() else 140)  # logs and READMEs: no wrapped cells
        try:
            report = self.run(args, console)
        except UsageError as err:
            parser.error(str(err))
        self.show(report, console)
        save_outputs(report.rows, command=args.command_line, json_path=getattr(args, "json", None),
                     png_path=getattr(args, "png", None), chart_title=self.chart_title or "", console=console)
        return report.rows
