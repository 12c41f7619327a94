"""A run's curves as one picture: `RUN/curves.png` from `RUN/metrics.jsonl`, for a look at a days-long run.

Panels against the optimizer step: the loss and its terms, the learning rate and the EMA decay tau,
the monitor's accuracies (kNN top-1, the online probe's val and train top-1), and the speed (images/s and
the share of time spent waiting for data). A panel whose metrics the run never logged says so instead of
staying blank. Written by `relic-fast plot RUN` at any time, and once by a run that finishes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from dali_pipelines.atomic import write_atomically
from relic_fast.errors import ExitCode, RelicFastError

CURVES_NAME = "curves.png"

OTHER_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("schedules", ("lr", "tau")),
    ("accuracy (%)", ("knn_top1", "online_probe_top1", "online_probe_train_top1")),
    ("speed", ("images_per_s", "data_wait_pct")),
)
"""(panel title, metrics drawn in it) of the panels below the loss; a panel's second metric goes on a right-hand
axis when its scale differs (tau next to lr, data wait % next to images/s)."""

SECOND_AXIS = {"tau", "data_wait_pct"}


class NoMetricsError(RelicFastError):
    """The run folder has no metrics.jsonl, or one without a logged step (a bad `RUN` argument: exit 2)."""

    exit_code = ExitCode.CONFIG
    label = "no metrics"


def read_metrics(run: Path) -> list[dict]:
    """The rows of `run/metrics.jsonl` (one JSON object per logged step), skipping a torn last line."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise NoMetricsError(f"{path} does not exist: is {run} a run folder (pretrain --out)?")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write: the rest of the file is still good
    if not any("step" in row for row in rows):
        raise NoMetricsError(f"{path} holds no logged step yet")
    return rows


def series(rows: list[dict], name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the rows that logged it."""
    points = [(row["step"], row[name]) for row in rows if "step" in row and isinstance(row.get(name), (int, float))]
    return [step for step, _ in points], [value for _, value in points]


def panels(loss_metrics: Sequence[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(panel title, metrics drawn in it) of every panel, one a row: the loss panel drawing `loss_metrics` (the
    caller's: a pretraining's are `relic_fast.loss.LOSS_METRICS`, so this module lists no loss term), then
    `OTHER_PANELS`."""
    return (("loss", tuple(loss_metrics)), *OTHER_PANELS)


def plot_run(run: Path, out: Path | None = None, *, loss_metrics: Sequence[str]) -> Path:
    """Draw the run's curves into `out` (default `run/curves.png`, written atomically) and return its path;
    `loss_metrics` are the loss panel's metrics (`panels`)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    rows = read_metrics(run)
    out = Path(out) if out is not None else Path(run) / CURVES_NAME
    layout = panels(loss_metrics)
    figure, axes = plt.subplots(len(layout), 1, figsize=(9, 2.6 * len(layout)), sharex=True)
    for axis, (title, names) in zip(axes, layout):
        drawn = 0
        twin = None
        for name in names:
            steps, values = series(rows, name)
            if not steps:
                continue
            target = axis
            if name in SECOND_AXIS and drawn:
                twin = twin or axis.twinx()
                target = twin
            target.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=name,
                        color=f"C{names.index(name)}")
            target.set_ylabel(name if target is twin else title)
            drawn += 1
        if drawn:
            handles = [line for ax in (axis, twin) if ax is not None for line in ax.get_lines()]
            axis.legend(handles=handles, loc="best", fontsize=8)
        else:
            axis.text(0.5, 0.5, f"not logged: {', '.join(names)}", ha="center", va="center",
                      transform=axis.transAxes, color="gray")
        axis.set_title(title, fontsize=10, loc="left")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("optimizer step")
    figure.suptitle(f"{Path(run).resolve().name}: {len(rows)} logged rows")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(out, lambda handle: figure.savefig(handle, dpi=110, format="png"))
    finally:
        plt.close(figure)
    return out
