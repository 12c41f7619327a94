"""Every rank's random state travels through a checkpoint: a torchrun run with sampled negatives
(`loss.num_negatives > 0`, each rank draws its own) resumes bit-identical to one never stopped."""

import shutil

import pytest

from relic_fast.checkpoint import checkpoint_path, read_checkpoint

from tests.relic_fast.test_trainer import assert_same_weights
from tests.support import cli_process

NEGATIVES = ("--set", "loss.num_negatives=2")


@pytest.mark.slow
def test_a_resumed_torchrun_run_with_sampled_negatives_is_bit_identical(tiny_demo, tmp_path):
    run = tmp_path / "run"  # 4 steps, checkpoints at 2 and 4 (batch 8: 4 per rank)
    code, output = cli_process.run(cli_process.pretrain_args(tiny_demo, run, 4, *NEGATIVES), ranks=2)
    assert code == 0, output

    resumed = tmp_path / "resumed"  # the same run as if it had stopped after step 2
    shutil.copytree(run / "checkpoints", resumed / "checkpoints")
    checkpoint_path(resumed, 4).unlink()
    code, output = cli_process.run(cli_process.pretrain_args(tiny_demo, resumed, 4, *NEGATIVES, "--resume"), ranks=2)
    assert code == 0 and "resumed from" in output, output
    assert_same_weights(checkpoint_path(run, 4), checkpoint_path(resumed, 4))
    assert len(read_checkpoint(checkpoint_path(run, 2))["rng"]) == 2  # one random state per rank
