"""`python -m relic_fast ...` (what `torchrun -m relic_fast` runs): the Typer CLI."""

from relic_fast.cli import app

if __name__ == "__main__":
    app()
