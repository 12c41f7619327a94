"""A rich progress bar shared by the dataset tools, handed to library functions as two callbacks."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


@contextmanager
def progress_bar(description: str, console: Console | None = None
                 ) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """Yield `(on_start(total), on_progress(n))` driving one bar; library code stays UI-free."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    task = progress.add_task(description, total=None)
    with progress:
        yield (lambda total: progress.update(task, total=total),
               lambda n: progress.advance(task, n))
