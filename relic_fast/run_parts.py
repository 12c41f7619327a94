"""The parts a pretraining run is built from, each from the run's one config and plan: the step context
(networks, LARS and the step; DDP-wrapped and with SyncBatchNorm when distributed; the compile cache), the
online probe, and this rank's loader; and the resolved config a checkpoint records. The trainer calls them in
order (`Trainer.__init__`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.nn.parallel import DistributedDataParallel

from dali_pipelines.dataset import DatasetSpec
from dali_pipelines.loader import PretrainLoader, build_pretrain_loader
from relic_fast.compiling import compile_cache_folder, use_compile_cache
from relic_fast.config import Config
from relic_fast.distributed import World
from relic_fast.errors import ResumeMismatchError
from relic_fast.online_probe import OnlineProbe, labelled_classes
from relic_fast.run_plan import RunPlan
from relic_fast.step import StepContext, build_step_context


def run_step_context(config: Config, plan: RunPlan, world: World, out_dir: Path, lr: float) -> StepContext:
    """Networks (the online one DDP-wrapped when distributed), LARS at `lr` and the step, from the shared
    builder; the compile cache (`train.compile_cache`) in use before the first compile."""
    wrap = None
    if world.distributed:
        ids = [world.device.index] if world.device.type == "cuda" else None
        wrap = lambda online: DistributedDataParallel(online, device_ids=ids, broadcast_buffers=False)  # noqa: E731
    # SyncBatchNorm runs on CUDA only; gloo (CPU) runs keep per-rank BatchNorm statistics.
    sync_batchnorm = world.distributed and config.model.sync_batchnorm and world.device.type == "cuda"
    cache = compile_cache_folder(config.train.compile_cache, out_dir) if plan.compile else None
    if cache is not None:
        use_compile_cache(cache)  # before the first compile: inductor reads the folder at each lookup
    return build_step_context(config.model, config.loss, config.optim, device=world.device,
                              precision=config.train.precision, channels_last=config.train.channels_last,
                              compiled=plan.compile, compile_mode=config.train.compile_mode,
                              compile_scope=config.train.compile_scope, lr=lr, sync_batchnorm=sync_batchnorm,
                              wrap=wrap)


def online_probe(config: Config, dataset: DatasetSpec, feature_dim: int, world: World) -> OnlineProbe | None:
    """The online probe `eval.online_probe` asks for, on data whose samples all carry a label (else None)."""
    classes = labelled_classes(dataset)
    if not config.eval.online_probe or not classes:
        return None
    return OnlineProbe(feature_dim, classes, lr=config.eval.online_probe_lr, world=world)


def rank_loader(config: Config, plan: RunPlan, world: World, dataset: DatasetSpec, *, state: str | None,
                start_step: int, resumed_from: Path | None) -> PretrainLoader:
    """This rank's shard of the pretraining pipeline: restored to `state` (a resume's saved position), or, when
    a resume accepted a change of the data or its order (no `state` then), started at `start_step`.

    The resume rule has compared everything the loader's own check compares, so its refusal (a ValueError)
    cannot normally happen; should it, it is the same refusal, one line, not a traceback."""
    try:
        return build_pretrain_loader(dataset, config.views, config.data,
                                     batch_size=config.train.batch_size // world.world_size, seed=config.train.seed,
                                     shard_id=world.rank, num_shards=world.world_size,
                                     device_id=plan.dali_device_id, checkpoint=state,
                                     start_step=start_step if state is None else 0)
    except ValueError as err:
        if state is None:
            raise
        raise ResumeMismatchError(f"{resumed_from}: --resume cannot restore the data position: {err}; resume with "
                                  f"the saved config (config.toml in the run folder), or start a new run in "
                                  f"another --out folder") from None


def resolved_config(config: Config, plan: RunPlan) -> dict[str, dict[str, Any]]:
    """The config as it runs on this machine, every "auto" the resume rule compares resolved (views'
    interpolation, the loss and LARS implementation, the pipeline's device)."""
    resolved = config.to_dict()
    resolved["data"]["device"] = "cpu" if plan.dali_device_id is None else "gpu"
    return resolved
