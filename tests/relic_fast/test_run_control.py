"""Stopping and off-schedule checkpoints: signals and `train.checkpoint_minutes`, in one process, agreed
by two gloo ranks, and end to end through the CLI (a second Ctrl-C, and a two-rank torchrun run)."""

import dataclasses
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

from relic_fast.checkpoint import checkpoint_path, list_checkpoints, read_checkpoint
from relic_fast.errors import ExitCode
from relic_fast.run_control import Decision, RunControl

from tests.support import cli_process


def test_a_stop_signal_is_acted_on_at_the_next_step():
    before = signal.getsignal(signal.SIGUSR1)
    try:
        with RunControl(checkpoint_every=100, checkpoint_minutes=0, is_main=True) as control:
            assert control.after_step(1) == Decision()
            os.kill(os.getpid(), signal.SIGUSR1)
            assert control.after_step(2) == Decision(stop="SIGUSR1")
            assert control.after_step(100) == Decision(checkpoint=True, stop="SIGUSR1")
        assert signal.getsignal(signal.SIGUSR1) == control._on_signal  # kept: the process is on its way out
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_without_a_stop_the_signal_handlers_are_restored():
    before = [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)]
    with RunControl(checkpoint_every=100, checkpoint_minutes=0, is_main=True) as control:
        assert signal.getsignal(signal.SIGTERM) == control._on_signal
        control.after_step(1)
    assert [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)] == before


def test_a_second_sigint_stops_at_once_but_a_second_sigterm_waits():
    before = [signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)]
    try:
        with RunControl(checkpoint_every=100, checkpoint_minutes=0, is_main=True) as control:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert control.after_step(1).stop == "SIGTERM"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)  # the handler runs here, in the main thread
    finally:
        for number, handler in zip((signal.SIGTERM, signal.SIGINT, signal.SIGUSR1), before):
            signal.signal(number, handler)


def test_checkpoint_minutes_count_from_the_last_checkpoint():
    now = [0.0]
    control = RunControl(checkpoint_every=5, checkpoint_minutes=1, is_main=True, clock=lambda: now[0])
    with control:
        due = []
        for step, seconds in enumerate([30, 61, 100, 122, 130, 150, 185], start=1):
            now[0] = seconds
            due.append(control.after_step(step).checkpoint)
    # due at 61 s and 122 s; step 5 is on the step schedule, so 185 s is only 55 s after the last checkpoint
    assert due == [False, True, False, True, True, False, False]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _agree(rank: int, world: int, port: int, report: str) -> None:
    """Rank 1 alone receives SIGUSR1 before step 5; only rank 0's clock passes a minute (at step 3)."""
    from relic_fast.distributed import control_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.distributed.init_process_group("gloo")
    now = [0.0]
    control = RunControl(checkpoint_every=1000, checkpoint_minutes=1, is_main=rank == 0, group=control_group(),
                         clock=lambda: now[0])
    decisions = []
    with control:
        for step in range(1, 20):
            now[0] = (100.0 if step >= 3 else 0.0) if rank == 0 else 1e9  # rank 1's clock must not count
            if rank == 1 and step == 5:
                os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.02 * rank)  # the ranks drift apart
            decision = control.after_step(step)
            decisions.append([step, decision.checkpoint, decision.stop])
            if decision.stop:
                break
    Path(f"{report}.{rank}").write_text(json.dumps(decisions))
    torch.distributed.destroy_process_group()


def test_ranks_agree_on_the_step_to_checkpoint_and_to_stop(tmp_path):
    report = str(tmp_path / "decisions")
    torch.multiprocessing.spawn(_agree, args=(2, _free_port(), report), nprocs=2)
    ranks = [json.loads(Path(f"{report}.{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    # one step late: rank 0's clock after step 3 -> checkpoint after step 4; rank 1's signal before 5 -> stop after 6
    assert ranks[0] == [[1, False, None], [2, False, None], [3, False, None], [4, True, None], [5, False, None],
                        [6, False, "SIGUSR1"]]


def test_checkpoint_minutes_adds_checkpoints_between_step_intervals(tiny_config, tmp_path):
    from relic_fast.trainer import pretrain  # here, so that the spawned ranks above need not import it

    train = dataclasses.replace(tiny_config.train, max_steps=2, checkpoint_every=1000, checkpoint_minutes=1e-9,
                                keep_checkpoints=5)
    pretrain(tiny_config.replace(train=train), out_dir=tmp_path)
    assert [read_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [1, 2]  # 1: the clock; 2: the end


@pytest.mark.slow
def test_cli_second_ctrl_c_stops_at_once_without_a_checkpoint(tiny_demo, tmp_path):
    process = cli_process.start(cli_process.pretrain_args(tiny_demo, tmp_path, 6),
                                cli_process.SLOW_STEPS.format(seconds=3))
    code, output = cli_process.signal_when(checkpoint_path(tmp_path, 2), process, signal.SIGINT, signal.SIGINT)
    assert code == ExitCode.INTERRUPTED, output
    assert "interrupted: stopped at once, no checkpoint written" in output and "Traceback" not in output, output
    assert [read_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [2]


def loader_positions(path: Path) -> list[int]:
    """Each rank's data position in a checkpoint, in steps from the start (5 steps per epoch here)."""
    states = [json.loads(text) for text in read_checkpoint(path)["loader"]]
    return [state["epoch"] * 5 + state["step"] for state in states]


@pytest.mark.slow
def test_torchrun_ranks_stop_at_the_same_step_and_rank_0_speaks_for_all(tiny_demo, tmp_path):
    run = tmp_path / "run"
    args = cli_process.pretrain_args(tiny_demo, run, 8)  # batch 8: 4 per rank, 5 steps per epoch of 20 images
    launcher = cli_process.start(args, ranks=2)
    cli_process.wait_for(checkpoint_path(run, 2), launcher)
    os.kill(cli_process.worker_pids(launcher)[1], signal.SIGUSR1)  # rank 1 only, as a scheduler might
    code, output = cli_process.finish(launcher)
    assert code != 0, output
    stops = [line for line in output.splitlines() if "stopped: SIGUSR1 received" in line]
    assert len(stops) == 1, output
    newest = list_checkpoints(run)[-1]
    stopped_at = read_checkpoint(newest)["step"]
    assert f"finished step {stopped_at} and saved {newest}" in stops[0] and 2 < stopped_at < 8, output
    assert loader_positions(newest) == [stopped_at, stopped_at]  # both ranks stopped at that step
    assert "done:" not in output and "exitcode: 75" in output, output  # torchrun reports each rank's code
    assert not re.search(r"exitcode\s*:\s*-", output), output  # no rank was killed (torchrun SIGTERMs the rest)
    assert output.count("torchrun --signals-to-handle") == 1, output  # rank 0 warns: SIGUSR1 sent to it is lost

    code, output = cli_process.run(args + ["--resume"], ranks=2)
    assert code == 0, output
    assert output.count("done:") == 1 and output.count(f"resumed from {newest}") == 1, output
    assert "checkpoint None" not in output
    assert read_checkpoint(list_checkpoints(run)[-1])["step"] == 8


SLOW_DATASET = ("import pathlib, time, relic_fast.data_plan as t; real = t.resolve_dataset; "
                "t.resolve_dataset = lambda *a, **k: (pathlib.Path({marker!r}).touch(), time.sleep({seconds}), "
                "real(*a, **k))[2]; ")
"""A `prelude` that makes the trainer's dataset resolution announce itself (`marker`) and then take `seconds`:
a signal sent once the marker exists lands while the trainer is still being built."""


@pytest.mark.slow
def test_sigterm_while_the_trainer_builds_stops_with_75_and_writes_nothing(tiny_demo, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "resolving"
    process = cli_process.start(cli_process.pretrain_args(tiny_demo, run, 2),
                                SLOW_DATASET.format(marker=str(marker), seconds=3))
    code, output = cli_process.signal_when(marker, process, signal.SIGTERM)
    assert code == ExitCode.STOPPED, output
    assert "stopped: SIGTERM received before the first step" in output and "Traceback" not in output, output
    assert list_checkpoints(run) == [] and not (run / "config.toml").exists() and not (run / "run.lock").exists()


@pytest.mark.slow
def test_torchrun_told_to_handle_sigusr1_passes_it_to_every_rank(tiny_demo, tmp_path):
    run = tmp_path / "run"
    launcher = cli_process.start(cli_process.pretrain_args(tiny_demo, run, 10), ranks=2,
                                 PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")  # --signals-to-handle
    cli_process.wait_for(checkpoint_path(run, 2), launcher)
    os.kill(launcher.pid, signal.SIGUSR1)  # to torchrun, as `sbatch --signal=USR1@120` does
    code, output = cli_process.finish(launcher)
    assert code != 0, output
    assert len([line for line in output.splitlines() if "stopped: SIGUSR1 received" in line]) == 1, output
    stopped_at = read_checkpoint(list_checkpoints(run)[-1])["step"]
    assert 2 < stopped_at < 10 and loader_positions(list_checkpoints(run)[-1]) == [stopped_at] * 2, output
    assert "--signals-to-handle" not in output, output  # no warning: SIGUSR1 is handled
