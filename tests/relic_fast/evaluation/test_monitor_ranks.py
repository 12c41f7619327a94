"""The kNN monitor under two gloo ranks: a rank that gives up (a stop signal seen by it alone) and a rank that
finished its shard meet at the agreement point, so neither waits inside a gather the other never enters."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, train_root: str, val_root: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from dali_pipelines.dataset import resolve_dataset
    from relic_fast.config import load_config
    from relic_fast.distributed import World
    from relic_fast.evaluation.validate import KnnValidator
    from relic_fast.loop import MonitorInterrupted
    from relic_fast.models import build_encoder

    config = load_config(None, ["train.knn_every_epochs=1", "eval.image_size=32", "eval.linear_batch_size=4",
                                "data.num_threads=1", "data.device=cpu"])
    validator = KnnValidator.from_config(config)
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", small_stem=True)
    world = World(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))

    def agree(failed_here: bool) -> bool:
        flag = torch.tensor([int(failed_here or rank == 1)])  # rank 1 saw a stop signal
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return not flag.item()

    try:
        validator.validate(encoder, train_dataset=resolve_dataset(train_root), val_dataset=resolve_dataset(val_root),
                           world=world, should_stop=lambda: rank == 1, agree=agree)
        results[rank] = "finished"
    except MonitorInterrupted:
        results[rank] = "interrupted"
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_rank_that_gives_up_never_leaves_the_other_in_a_gather(tiny_demo):
    results = mp.Manager().dict()
    context = mp.spawn(rank_main, args=(free_port(), str(tiny_demo / "train"), str(tiny_demo / "val"), results),
                       nprocs=2, join=False)
    assert context.join(timeout=240) or context.join(timeout=60), "a rank hung in the monitor"
    assert dict(results) == {0: "interrupted", 1: "interrupted"}
