"""Helpers the tests share (the tiny recipe, the CLI as a child process, generated data, oracles, worker
processes), imported as `tests.support.X`; `REPO` is the repository root."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
