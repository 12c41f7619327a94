"""One rank of the two-node test (run by `torchrun`): the tiny recipe's Trainer, then a report of this rank.

    torchrun --nnodes 2 --node-rank R --nproc-per-node 1 --rdzv-endpoint HOST:PORT \\
        multinode_worker.py DATA OUT STEPS REPORT

The report (`REPORT.<rank>`, torch.save) holds the rank, local rank and world size torchrun gave, the
sample indices of this rank's shard, and the online and target parameters after the last step.
`compare_on_two_ranks` is the spawn target of the test of `same_on_every_rank` (light imports only).
"""

import sys
from pathlib import Path

import torch

from tests.support.tiny_recipe import DEMO_RECIPE, TINY_OVERRIDES


def main(data: str, out: str, steps: str, report: str) -> None:
    from relic_fast.config import load_config
    from relic_fast.trainer import Trainer

    torch.set_num_threads(1)
    config = load_config(DEMO_RECIPE, TINY_OVERRIDES + [f"data.path={data}", f"train.max_steps={steps}"])
    trainer = Trainer(config, Path(out))
    world = trainer.world
    samples = trainer.loader.plan(0).samples[: len(trainer.loader) * trainer.loader.batch_size].tolist()
    trainer.train()
    # parameters, not buffers: without SyncBatchNorm (CUDA only) each rank keeps its own BN statistics
    torch.save({"rank": world.rank, "local_rank": world.local_rank, "world_size": world.world_size,
                "samples": samples, "online": dict(trainer.online_module.named_parameters()),
                "target": dict(trainer.target.named_parameters())}, f"{report}.{world.rank}")
    torch.distributed.destroy_process_group()


def compare_on_two_ranks(rank: int, port: int, cases: list[list], result: str) -> None:
    """`torch.multiprocessing.spawn` target: `same_on_every_rank(case[rank])` for each case, saved per rank."""
    from relic_fast.distributed import same_on_every_rank

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.save([same_on_every_rank(case[rank]) for case in cases], f"{result}.{rank}")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
