"""What every command shares: the consoles, the one place errors become one line, the config options.

`ErrorReportingGroup` turns the errors a user can fix (`relic_fast.errors`) into one line and their exit
code; `--debug` or RELIC_FAST_DEBUG=1 adds the full traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from relic_fast.config import Config, load_run_config
from relic_fast.errors import ExitCode, classify, describe

DEBUG_ENV = "RELIC_FAST_DEBUG"
console = Console()
error_console = Console(stderr=True)

ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML recipe (see configs/); defaults apply to what it leaves out.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override one key: section.key=value (repeatable), e.g. --set train.batch_size=256.")]


def launch_rank() -> tuple[int, int]:
    """(rank, world size) as torchrun set them (imported on use: commands like `config show` start without torch)."""
    from relic_fast.distributed import launch_rank as from_environment

    return from_environment()


def report_error(label: str, message: str, style: str = "bold red") -> None:
    """Print `label: message` to stderr unwrapped, naming the rank under torchrun."""
    rank, world_size = launch_rank()
    where = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    error_console.print(Text.assemble(where, (f"{label}:", style), " ", message), soft_wrap=True)


def usage_error(message: str) -> NoReturn:
    """Stop the command with `error: message` and exit code 2: the input the user gave cannot be used."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def resolve_config(path: Optional[Path], overrides: Optional[list[str]], **options: Any) -> Config:
    """Load and validate the config with the command's `--set` overrides and its own `options` (`data`, `val`,
    `val_labels`, `steps`), applied by `relic_fast.config.load_run_config`, the one place for them. A
    `ConfigError` names the key; `ErrorReportingGroup` reports it."""
    return load_run_config(path, overrides or [], **options)


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """Print (item, value) rows as a two-column table."""
    table = Table(title=title)
    table.add_column("item")
    table.add_column("value")
    for item, value in rows:
        table.add_row(item, value)
    console.print(table)


class ErrorReportingGroup(TyperGroup):
    """The command group whose `invoke` turns every known error of any command into one line and its
    exit code (`relic_fast.errors.ExitCode`); unexpected errors keep their traceback (a bug to report)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # typer's own exits and usage errors
        except KeyboardInterrupt:  # a second Ctrl-C during a run (see run_control), or one outside it
            self._show_traceback()
            report_error("interrupted", "stopped at once, no checkpoint written; `--resume` continues from the "
                                        "last one")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        except Exception as err:
            known = classify(err)
            if known is None:
                if launch_rank()[1] > 1:
                    report_error("unexpected error", f"{type(err).__name__} (traceback below)")
                raise
            code, label = known
            if not (getattr(err, "rank_0_speaks", False) and launch_rank()[0] != 0):
                self._show_traceback()
                report_error(label, describe(err), "bold yellow" if code in (ExitCode.STOPPED, ExitCode.OK) else "bold red")
            if code == ExitCode.STOPPED and launch_rank()[1] > 1:
                # Under torchrun every rank leaves at once after the agreed checkpoint: torchrun SIGTERMs the
                # ranks still alive when the first one exits, and a rank in Python's slow teardown (its stop
                # handlers already gone) would die of it and be reported as killed.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            raise typer.Exit(code) from None

    @staticmethod
    def _show_traceback() -> None:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
