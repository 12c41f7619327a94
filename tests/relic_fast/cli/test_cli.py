"""CLI shell: every command (and sub-command) answers --help; config errors exit cleanly naming the key."""

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from relic_fast.cli import app

runner = CliRunner()


def command_paths(command=None, prefix=()):
    """Every command path of the Typer app, e.g. ("config", "show")."""
    command = command or get_command(app)
    paths = []
    for name, sub in getattr(command, "commands", {}).items():
        paths.append(prefix + (name,))
        paths += command_paths(sub, prefix + (name,))
    return paths


def test_the_documented_commands_exist():
    names = {path[0] for path in command_paths()}
    assert {"info", "config", "pretrain"} <= names


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p))
def test_help(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "usage" in result.output.lower()


def test_config_show_prints_resolved_toml():
    result = runner.invoke(app, ["config", "show", "--set", "train.batch_size=64"])
    assert result.exit_code == 0, result.output
    assert "[train]" in result.output and "batch_size = 64" in result.output


def test_config_error_is_a_clean_exit_naming_the_key():
    result = runner.invoke(app, ["config", "show", "--set", "views.num_large=0"])
    assert result.exit_code == 2
    assert "views.num_large" in result.output
    assert "Traceback" not in result.output


def test_info_lists_versions_and_fast_paths():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for word in ("torch", "dali", "triton", "apex", "fused Triton loss", "compiled CPU pipeline kernels"):
        assert word in result.output
