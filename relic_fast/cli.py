"""The `relic-fast` command line: parse, resolve the config, call one library function.

No training logic lives here; every command is a thin wrapper over a `relic_fast` function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from relic_fast.config import Config, ConfigError, load_config

app = typer.Typer(help="RELICv2 self-supervised pretraining of ResNets with DALI GPU pipelines.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect configuration recipes.", no_args_is_help=True)
app.add_typer(config_app, name="config")
console = Console()

ConfigPath = Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML recipe (see configs/); defaults apply to what it leaves out.")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override one key: section.key=value (repeatable), e.g. --set train.batch_size=256.")]


def resolve_config(path: Optional[Path], overrides: Optional[list[str]]) -> Config:
    """Load and validate the config, turning a config error into a clean exit naming the key."""
    try:
        return load_config(path, overrides or [])
    except ConfigError as err:
        console.print(f"[bold red]config error:[/] {err}")
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(path: Annotated[Optional[Path], typer.Argument(help="TOML recipe; omit for the defaults.")] = None,
                overrides: SetOption = None,
                explain: Annotated[bool, typer.Option(help="Print each key's documentation too.")] = False) -> None:
    """Print the resolved config (file + --set overrides + defaults) as TOML."""
    from relic_fast.config import field_docs, section_type, to_toml

    config = resolve_config(path, overrides)
    if not explain:
        typer.echo(to_toml(config))
        return
    for name, values in config.to_dict().items():
        docs = field_docs(section_type(name))
        typer.echo(f"[{name}]")
        for key, value in values.items():
            typer.echo(f"# {docs.get(key, '')}")
            typer.echo(f"{key} = {value!r}")
        typer.echo("")


@app.command()
def info() -> None:
    """Show versions (torch, torchvision, DALI, Triton, apex), devices, and which fast paths run here."""
    from relic_fast.environment import fast_paths, machine_info

    machine = machine_info()
    table = Table(title="relic-fast environment")
    table.add_column("item")
    table.add_column("value")
    for key in ("python", "torch", "torchvision", "dali", "triton"):
        table.add_row(key, str(machine[key] or "not installed"))
    from relic_fast.environment import apex_available
    table.add_row("apex", "installed" if apex_available() else "not installed")
    devices = f"{machine['gpus']} CUDA GPU(s): {machine['gpu']}" if machine["gpus"] else "no CUDA GPU"
    table.add_row("devices", f"{devices}; CPU: {machine['cpu']} ({machine['cpus']} cores)")
    console.print(table)
    paths = Table(title="fast paths")
    paths.add_column("path")
    paths.add_column("available")
    paths.add_column("note")
    for name, (ok, note) in fast_paths().items():
        paths.add_row(name, "[green]yes[/]" if ok else "[yellow]no[/]", note)
    console.print(paths)
