"""What a running pretraining (or linear evaluation) shows and records: the live display, metrics.jsonl and
TensorBoard.

Only rank 0 creates a `RunMonitor`; other ranks get a silent one. Metrics arrive here already read
from the device (the trainer reads them at its log interval), so nothing in this module syncs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def display_fields(loss_metrics: Sequence[str]) -> tuple[str, ...]:
    """The fields users watch, in display order: the epoch, the loss metrics `loss_metrics`, the schedules, the
    speed and the kNN top-1. The loss metrics come from the caller: a pretraining shows its loss terms
    (`relic_fast.loss.LOSS_METRICS`), a linear evaluation its one loss; this module lists none of them."""
    return ("epoch", *loss_metrics, "lr", "tau", "images_per_s", "data_wait_pct", "knn_top1")


def format_metrics(metrics: dict[str, Any], loss_metrics: Sequence[str] = ("loss",)) -> str:
    """One line of the live display: the fields users watch (`display_fields`), compactly formatted."""
    parts = []
    for key in display_fields(loss_metrics):
        if key not in metrics:
            continue
        value = metrics[key]
        if key == "epoch":
            parts.append(f"epoch {value:.2f}")
        elif key == "images_per_s":
            parts.append(f"{value:,.0f} img/s")
        elif key == "data_wait_pct":
            parts.append(f"data wait {value:.0f}%")
        elif key == "knn_top1":
            parts.append(f"kNN {value:.1f}%")
        elif key in ("lr", "tau"):
            parts.append(f"{key} {value:.4g}")
        else:
            parts.append(f"{key} {value:.4f}")
    return " | ".join(parts)


class RunMonitor:
    """Rich progress display, `metrics.jsonl` lines and optional TensorBoard scalars for one run.

    `loss_metrics`: the loss metrics the display shows (`display_fields`); default one "loss"."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, enabled: bool = True,
                 console: Console | None = None, label: str = "pretrain", tensorboard: bool = True,
                 loss_metrics: Sequence[str] = ("loss",)):
        self.enabled = enabled
        self.loss_metrics = tuple(loss_metrics)
        self.console = console or Console()
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self._tensorboard = None
        self._progress = None
        self.total_steps = total_steps
        if not enabled:
            return
        if tensorboard:
            self._open_tensorboard(run_dir)
        if not self.console.is_terminal:
            return  # logs, CI, pipes: one plain line per logging step instead of a live display
        self._progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  TextColumn("{task.fields[metrics]}"), console=self.console,
                                  transient=False)
        self._task = self._progress.add_task("steps", total=total_steps, completed=start_step, metrics="")

    def _open_tensorboard(self, run_dir: Path) -> None:
        """TensorBoard scalars under RUN_DIR/tensorboard when tensorboard is installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self._tensorboard = None

    def __enter__(self) -> "RunMonitor":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record one logging step: a JSON line, TensorBoard scalars and the display."""
        if not self.enabled:
            return
        record = {"step": step, "time": time.time(), **metrics}
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, step)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, metrics=format_metrics(metrics, self.loss_metrics))
        else:
            line = format_metrics(metrics, self.loss_metrics)
            self.console.print(f"step {step}/{self.total_steps} | {line}", soft_wrap=True)

    def record(self, step: int, fields: dict[str, Any]) -> None:
        """Write one metrics.jsonl line that is no metric (e.g. the changes a resume accepted): nothing is
        displayed or sent to TensorBoard, and plots skip it (it holds no number they draw)."""
        if self.enabled:
            with self.metrics_path.open("a") as handle:
                handle.write(json.dumps({"step": step, "time": time.time(), **fields}) + "\n")

    def advance(self, step: int) -> None:
        """Move the live display to `step` (no record written: for steps between logs)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def message(self, text: str) -> None:
        """Print a line above the live display."""
        if self.enabled:
            self.console.print(text, soft_wrap=True)  # one line, however narrow the terminal or log

    def close(self) -> None:
        """Stop the display and flush TensorBoard."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
