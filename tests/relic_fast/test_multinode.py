"""Two nodes on one machine: two `torchrun --nnodes 2 --node-rank R --rdzv-endpoint ...` launchers on
localhost (gloo, one process each). Every rank reads a disjoint shard, parameters stay identical across
ranks, and `relic-fast pretrain --resume` under the same launchers continues exactly."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from relic_fast.checkpoint import checkpoint_path, list_checkpoints

from tests.relic_fast.test_trainer import _free_port, assert_same_weights
from tests.support import REPO
from tests.support.multinode_worker import compare_on_two_ranks
from tests.support.tiny_recipe import DEMO_RECIPE, TINY_OVERRIDES

WORKER = REPO / "tests" / "support" / "multinode_worker.py"
LAUNCH_TIMEOUT_S = 300
"""A launch that has not finished by then is killed (both nodes) and the test fails: CI never hangs."""


def launch_two_nodes(command: list[str], log_dir: Path) -> None:
    """Run `command` under two torchrun launchers (node ranks 0 and 1) sharing a rendezvous endpoint on localhost."""
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    launchers = []
    for node_rank in (0, 1):
        log = open(log_dir / f"node{node_rank}.log", "w")
        launchers.append((subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node_rank),
             "--nproc-per-node", "1", "--rdzv-endpoint", endpoint, *command],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True), log))
    try:
        for process, _ in launchers:
            process.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process, log in launchers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # the launcher and its workers
                process.wait()
            log.close()
    failed = [(n, p.returncode) for n, (p, _) in enumerate(launchers) if p.returncode != 0]
    if failed:
        tails = "\n".join(f"--- node {n} (exit {code}):\n" + (log_dir / f"node{n}.log").read_text()[-3000:]
                          for n, code in failed)
        pytest.fail(f"two-node launch failed or timed out after {LAUNCH_TIMEOUT_S} s:\n{tails}")


@pytest.mark.slow
def test_two_torchrun_nodes_shard_data_keep_parameters_identical_and_resume(tiny_demo, tmp_path):
    run, report = tmp_path / "run", tmp_path / "report"
    launch_two_nodes([str(WORKER), str(tiny_demo), str(run), "4", str(report)], tmp_path)
    ranks = [torch.load(f"{report}.{r}", weights_only=True) for r in range(2)]
    assert [(r["rank"], r["local_rank"], r["world_size"]) for r in ranks] == [(0, 0, 2), (1, 0, 2)]  # two nodes
    assert not set(ranks[0]["samples"]) & set(ranks[1]["samples"]), "ranks read overlapping samples"
    for network in ("online", "target"):
        for name, value in ranks[0][network].items():
            assert torch.equal(value, ranks[1][network][name]), f"{network}.{name} differs across nodes"
    assert [p.name for p in list_checkpoints(run)] == ["step-000000002.pt", "step-000000004.pt"]

    resumed = tmp_path / "resumed"  # the run as if both nodes had stopped after step 2
    shutil.copytree(run / "checkpoints", resumed / "checkpoints")
    checkpoint_path(resumed, 4).unlink()
    overrides = [arg for item in TINY_OVERRIDES for arg in ("--set", item)]
    launch_two_nodes(["-m", "relic_fast", "pretrain", "--config", str(DEMO_RECIPE), "--data", str(tiny_demo),
                      "--out", str(resumed), "--steps", "4", "--resume", *overrides], tmp_path)
    assert "resumed from" in (tmp_path / "node0.log").read_text()
    assert_same_weights(checkpoint_path(run, 4), checkpoint_path(resumed, 4))



def test_ranks_that_found_different_checkpoints_are_told_apart(tmp_path):
    """What `Trainer.restore` checks before resuming: a node without the shared run folder finds no checkpoint."""
    cases = [["step-000000002.pt", "step-000000002.pt"], ["step-000000002.pt", None], [None, None]]
    result = str(tmp_path / "same")
    torch.multiprocessing.spawn(compare_on_two_ranks, args=(_free_port(), cases, result), nprocs=2)
    assert [torch.load(f"{result}.{r}") for r in range(2)] == [[True, False, True]] * 2
