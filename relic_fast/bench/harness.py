"""The one measuring harness every benchmark uses (loader, loss, step).

A benchmark builds a zero-argument callable that does one unit of work (consume N batches, run one
loss forward + backward, one training step), hands it to `measure`, and gets a `Result` row back:
`time_it` warms up, repeats, and keeps every per-repeat time so that a row carries the median and
the spread (interquartile range), never a single lucky run. Rows are printed with `print_table`,
saved with `write_json` (which records the machine, library versions, git commit, dirty tree and date
next to the numbers: `relic_fast.provenance`) and drawn with `plot_images_per_s`.

Inside a benchmark's `run` (see `relic_fast.bench.benchmark`): build the callable, call
`measure(bench="step", pipeline=..., fn=..., items=batch_size, device=device, ...)` for each
configuration, optionally `add_ratios(rows, baseline=...)`, and return the rows; the one `main`
prints, writes and plots them.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from functools import partial
from typing import Any, Callable, Iterable, Sequence

from relic_fast.environment import synchronize
from relic_fast.provenance import provenance, write_results_json

__all__ = ["Timing", "Result", "quartiles", "time_it", "measure", "add_ratios", "print_table", "write_json",
           "plot_images_per_s"]


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """(first, third) quartile of `values`: the one spread rule of every benchmark row.

    Linear interpolation between order statistics (`statistics.quantiles(method="inclusive")`, numpy's
    default), so that spreads from any benchmark are comparable and never reach outside the measured
    values; a single value is its own quartiles.
    """
    if not values:
        raise ValueError("quartiles of no values")
    if len(values) == 1:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of each measured repeat, with the statistics a report needs."""

    seconds: tuple[float, ...]
    """One entry per repeat, in the order they ran (warm-up calls excluded)."""

    cpu_seconds: tuple[float, ...] | None = None
    """CPU seconds (user + system, this process and its children) of each repeat, when counted."""

    @property
    def median(self) -> float:
        """Median seconds per repeat: the headline number (robust to a stray slow repeat)."""
        return statistics.median(self.seconds)

    @property
    def min(self) -> float:
        """Fastest repeat."""
        return min(self.seconds)

    @property
    def max(self) -> float:
        """Slowest repeat."""
        return max(self.seconds)

    @property
    def quartiles(self) -> tuple[float, float]:
        """(first, third) quartile of the repeats (`quartiles`)."""
        return quartiles(self.seconds)

    @property
    def iqr(self) -> float:
        """Interquartile range in seconds: the spread reported next to the median."""
        q1, q3 = self.quartiles
        return q3 - q1


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process (all threads) and its live descendants.

    CPU time per image is the figure that survives a busy machine: wall-clock rates drop when other
    processes take the cores, the CPU work per image does not. This process (DALI's threads included)
    is read at the clock's full resolution; its worker processes, on Linux, from /proc, whose 10 ms
    ticks are fine for their larger share; elsewhere only this process is counted.
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    parents, used = {}, {}
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    own = os.getpid()
    return time.process_time() + sum(used.get(pid, 0.0) for pid in tree if pid != own)


def time_it(fn: Callable[[], Any], *, warmup: int, repeats: int,
            sync: Callable[[], Any] | None = None, count_cpu: bool = False) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed, one clock reading per repeat.

    `sync` (e.g. `torch.cuda.synchronize`) runs before each clock reading so that queued device
    work is counted in the repeat that launched it, not in the next one. `count_cpu` also records
    each repeat's CPU seconds (`process_tree_cpu_seconds`, read outside the wall-clock window).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        cpu_start = process_tree_cpu_seconds() if count_cpu else 0.0
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()  # note: a host-device sync point, on purpose: the repeat ends when the device is done
        seconds.append(time.perf_counter() - start)
        if count_cpu:
            cpu_seconds.append(process_tree_cpu_seconds() - cpu_start)
    return Timing(tuple(seconds), tuple(cpu_seconds) if count_cpu else None)


@dataclass(frozen=True)
class Result:
    """One row of a benchmark report: what ran, how fast (median and spread) and how big."""

    bench: str
    """Which benchmark produced the row: "loader", "loss", "step"."""

    pipeline: str
    """The configuration measured: a loader pipeline ("dali-cpu", "torchvision"...), a loss
    implementation ("reference", "fused"), a step variant ("eager", "compiled")."""

    recipe: str = ""
    """The view recipe ("4L+2S") or problem size the configuration ran on."""

    threads: int | None = None
    """CPU worker threads / processes given to the configuration, when it has any."""

    batch_size: int | None = None
    """Samples per batch (per call of the measured function, unless `items` said otherwise)."""

    images_per_s: float | None = None
    """Items per second at the median repeat (None for benchmarks that only report time)."""

    images_per_s_spread: tuple[float, float] | None = None
    """Items per second at the slow and fast quartile repeats: the interquartile spread."""

    ms: float | None = None
    """Median milliseconds per repeat (per call of the measured function)."""

    ms_spread: tuple[float, float] | None = None
    """(first, third) quartile of milliseconds per repeat."""

    repeats: int = 0
    """How many timed repeats the median is taken over."""

    peak_gib: float | None = None
    """Peak memory of the configuration in GiB (device memory on CUDA), when measured."""

    cpu_ms_per_image: float | None = None
    """Median CPU milliseconds (all threads and worker processes) per image, when counted: the
    efficiency figure that other load on the machine does not distort."""

    ratios: dict[str, float] = field(default_factory=dict)
    """Speed relative to a baseline row, by the baseline's pipeline name: > 1 means faster."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping with the number (device, dtype, image sizes...)."""

    @property
    def speed(self) -> float:
        """Higher-is-better speed used for ratios: images/s when known, else repeats per second."""
        if self.images_per_s is not None:
            return self.images_per_s
        if self.ms:
            return 1000.0 / self.ms
        return math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the fields, with `extra` merged in at the top level."""
        row = asdict(self)
        extra = row.pop("extra")
        for key in ("images_per_s_spread", "ms_spread"):
            if row[key] is not None:
                row[key] = list(row[key])
        return {**row, **extra}


def measure(*, bench: str, pipeline: str, fn: Callable[[], Any], items: int | None, warmup: int,
            repeats: int, device: str | None = None, count_cpu: bool = False, **fields: Any) -> Result:
    """Time `fn` with `time_it` and turn the timing into a `Result` row.

    `items` is how many images one call of `fn` processes (None: report milliseconds only); `device`
    (e.g. "cuda") is where `fn` queues work: each repeat ends when that device is done
    (`relic_fast.environment.synchronize`); `count_cpu` adds the CPU milliseconds per image. Other
    keyword arguments fill the row's fields (`recipe`, `threads`, `batch_size`, `peak_gib`, `extra`).
    """
    sync = partial(synchronize, device) if device is not None else None
    timing = time_it(fn, warmup=warmup, repeats=repeats, sync=sync, count_cpu=count_cpu)
    q1, q3 = timing.quartiles
    rates = {}
    if items is not None:
        rates = {"images_per_s": items / timing.median, "images_per_s_spread": (items / q3, items / q1)}
        if timing.cpu_seconds is not None:
            rates["cpu_ms_per_image"] = statistics.median(timing.cpu_seconds) * 1e3 / items
    return Result(bench=bench, pipeline=pipeline, ms=timing.median * 1e3, ms_spread=(q1 * 1e3, q3 * 1e3),
                  repeats=len(timing.seconds), **rates, **fields)


def add_ratios(results: Sequence[Result], *, baseline: str, match: Iterable[str] = ("recipe", "threads"),
               metric: str = "speed") -> list[Result]:
    """Each row with a ratio to the `baseline` row with equal `match` fields (> 1: better than it).

    `metric="speed"`: the row's speed over the baseline's, stored as `ratios[baseline]`;
    `metric="cpu"`: the baseline's CPU ms per image over the row's, stored as `ratios[baseline + " cpu"]`
    (images per CPU-second relative to the baseline). Rows with no matching baseline row, the
    baseline rows themselves and rows lacking the metric come back unchanged.
    """
    keys = tuple(match)
    reference = {tuple(getattr(r, k) for k in keys): r for r in results if r.pipeline == baseline}
    out = []
    for row in results:
        base = reference.get(tuple(getattr(row, k) for k in keys))
        ratio = None
        if base is not None and row.pipeline != baseline:
            if metric == "speed" and base.speed > 0:
                ratio, key = row.speed / base.speed, baseline
            elif metric == "cpu" and row.cpu_ms_per_image and base.cpu_ms_per_image:
                ratio, key = base.cpu_ms_per_image / row.cpu_ms_per_image, f"{baseline} cpu"
        out.append(row if ratio is None else replace(row, ratios={**row.ratios, key: ratio}))
    return out


def format_rate(row: Result) -> str:
    """"median [slow-fast]" images/s, or "" when the row has no rate."""
    if row.images_per_s is None:
        return ""
    text = f"{row.images_per_s:,.1f}"
    if row.images_per_s_spread is not None:
        low, high = row.images_per_s_spread
        text += f" [{low:,.1f}-{high:,.1f}]"
    return text


def table_columns(results: Sequence[Result]) -> list[tuple[str, Callable[[Result], str]]]:
    """The table's columns: (header, cell formatter), leaving out columns no row fills."""
    columns: list[tuple[str, Callable[[Result], str]]] = [("pipeline", lambda r: r.pipeline)]
    if any(r.recipe for r in results):
        columns.append(("recipe", lambda r: r.recipe))
    if any(r.threads is not None for r in results):
        columns.append(("threads", lambda r: "" if r.threads is None else str(r.threads)))
    if any(r.images_per_s is not None for r in results):
        columns.append(("images/s median [IQR]", format_rate))
    columns.append(("ms median", lambda r: "" if r.ms is None else f"{r.ms:,.2f}"))
    if any(r.cpu_ms_per_image is not None for r in results):
        columns.append(("CPU ms/image", lambda r: "" if r.cpu_ms_per_image is None else f"{r.cpu_ms_per_image:,.1f}"))
    if any(r.peak_gib is not None for r in results):
        columns.append(("peak GiB", lambda r: "" if r.peak_gib is None else f"{r.peak_gib:.2f}"))
    baselines = sorted({name for r in results for name in r.ratios})
    for name in baselines:
        columns.append((f"x {name}", lambda r, n=name: f"{r.ratios[n]:.2f}" if n in r.ratios else ""))
    return columns


def print_table(results: Sequence[Result], title: str, console: Any = None) -> None:
    """Print `results` as a rich table (median and interquartile spread, ratios to baselines)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = table_columns(results)
    for header, _ in columns:
        table.add_column(header, justify="left" if header in ("pipeline", "recipe") else "right")
    for row in results:
        table.add_row(*(cell(row) for _, cell in columns))
    (console or Console()).print(table)


def write_json(path: str | Path, results: Sequence[Result], command: str) -> Path:
    """Write `{"command", "machine", "results", "provenance"}` to `path`: the numbers with where they came from.

    `machine` is `relic_fast.environment.machine_info()` plus the 1-minute load average at writing
    time (CPU figures measured on a busy machine are not comparable with quiet ones) and the
    tracked files that differ from `commit` (the code measured is the commit plus those edits);
    `provenance` is `relic_fast.provenance.provenance()`, the record every results JSON carries.
    """

    record = provenance()
    machine = {**record["machine"], "load_average": round(os.getloadavg()[0], 2),
               "uncommitted": record["git"]["uncommitted"]}
    payload = {"command": command, "machine": machine, "results": [r.to_dict() for r in results]}
    return write_results_json(path, payload, record)


def bar_label(row: Result) -> str:
    """A bar's x-axis label: pipeline, then recipe and threads when set."""
    parts = [row.pipeline]
    if row.recipe:
        parts.append(row.recipe)
    if row.threads is not None:
        parts.append(f"{row.threads} thr")
    return "\n".join(parts)


def plot_images_per_s(results: Sequence[Result], png_path: str | Path, title: str = "images/s") -> Path:
    """Save a bar chart of images/s per configuration, error bars spanning the interquartile spread."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI machines
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.images_per_s is not None]
    if not rows:
        raise ValueError("no row has an images/s figure to plot")
    pipelines = list(dict.fromkeys(r.pipeline for r in rows))
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(pipelines)}
    heights = [r.images_per_s for r in rows]
    spreads = [r.images_per_s_spread or (r.images_per_s, r.images_per_s) for r in rows]
    errors = [[max(h - low, 0.0) for h, (low, _) in zip(heights, spreads)],
              [max(high - h, 0.0) for h, (_, high) in zip(heights, spreads)]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.5))
    bars = ax.bar(range(len(rows)), heights, yerr=errors, capsize=4, color=[colours[r.pipeline] for r in rows])
    ax.bar_label(bars, labels=[f"{h:,.1f}" for h in heights], padding=2, fontsize=8)
    ax.set_xticks(range(len(rows)), [bar_label(r) for r in rows], fontsize=8)
    ax.set_ylabel("images/s (median, IQR bars)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def command_line(prog: str, argv: Sequence[str] | None) -> str:
    """The command that produced a result, as the user typed it (recorded in every JSON)."""
    import shlex
    import sys

    return shlex.join([*shlex.split(prog), *(sys.argv[1:] if argv is None else argv)])


def save_outputs(rows: Sequence[Result], *, command: str, json_path: str | Path | None,
                 png_path: str | Path | None = None, chart_title: str = "images/s", console=None) -> None:
    """Write the JSON (and PNG chart) a benchmark run was asked for, and say where."""
    say = console.print if console is not None else print
    if json_path:
        say(f"wrote {write_json(json_path, rows, command)}")
    if png_path:
        say(f"wrote {plot_images_per_s(rows, png_path, title=chart_title)}")
