"""`relic-fast profile` and the folder it writes into: it holds the folder's run lock, and a run
already there keeps its config.toml (the profiled training writes into `profiled_run/`).

No training runs here: the lock is checked before anything is built, and `Trainer` is replaced by a
stand-in that records where it was asked to write and stops the profile.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from relic_fast import profiler
from relic_fast.cli import app
from relic_fast.config import load_config
from relic_fast.errors import ExitCode, RunInUseError
from relic_fast.runlock import LOCK_NAME, RunLock

from tests.support.runlock_worker import Worker

RUN_CONFIG = 'title = "a pretraining run of its own"\n'


class TrainerBuilt(Exception):
    """Raised by the stand-in trainer: the profile got as far as building its trainer."""


@pytest.fixture()
def run_folder(tmp_path):
    """A pretraining run's folder: its config.toml and metrics.jsonl."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(RUN_CONFIG)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run


def test_profile_refuses_a_folder_whose_run_is_live(run_folder, tmp_path):
    args = ["profile", "--data", str(tmp_path / "never-read"), "--steps", "1", "--warmup", "1",
            "--out", str(run_folder), "--set", "train.device=cpu"]
    with Worker() as holder:
        assert holder.ask(f"acquire {run_folder}") == "won"
        result = CliRunner().invoke(app, args)
        assert json.loads((run_folder / LOCK_NAME).read_text())["pid"] == holder.pid
    assert result.exit_code == ExitCode.RUN_IN_USE, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if "run folder in use:" in line]
    assert len(lines) == 1 and f"process {holder.pid} " in lines[0], result.output
    assert (run_folder / "config.toml").read_text() == RUN_CONFIG
    assert not (run_folder / profiler.PROFILED_RUN).exists() and not (run_folder / "profile.json").exists()


def test_profile_writes_its_run_beside_a_run_not_over_it(run_folder, monkeypatch):
    built = []

    def stand_in_trainer(config, out_dir, *args, **kwargs):
        with pytest.raises(RunInUseError):  # the profile holds the folder's lock while it works
            RunLock(run_folder).acquire()
        built.append(out_dir)
        raise TrainerBuilt

    monkeypatch.setattr(profiler, "Trainer", stand_in_trainer)
    with pytest.raises(TrainerBuilt):
        profiler.profile_run(load_config(None, ["train.device=cpu"]), run_folder)
    assert built == [run_folder / profiler.PROFILED_RUN]
    assert (run_folder / "config.toml").read_text() == RUN_CONFIG
    assert (run_folder / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (run_folder / LOCK_NAME).exists()  # given back when the profile ends, failed or not
