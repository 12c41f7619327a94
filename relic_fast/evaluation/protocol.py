"""Dataset-level evaluation: build the DALI eval loaders, then run linear evaluation or the kNN monitor.

These functions are what the CLI, the demo experiment and the trainer's kNN monitor call: they take
dataset descriptions (`DatasetSpec`) and config sections, and return plain dicts of percentages.
`linear_eval` runs on one rank or many, stoppable and resumable: see `relic_fast.evaluation.session`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

from dali_pipelines.dataset import DatasetError
from dali_pipelines.loader import build_eval_loader
from dali_pipelines.readers import shard_bounds
from dali_pipelines.recipe import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from relic_fast.config import EvalConfig
from relic_fast.devices import dali_device_for
from relic_fast.distributed import World, all_gather_rows
from relic_fast.evaluation.classifier import HEAD_FILE, head_payload, save_head
from relic_fast.evaluation.features import encode, extract_features, frozen
from relic_fast.evaluation.knn import knn_accuracy
from relic_fast.evaluation.linear import LinearProbe, fit_linear_augmented, fit_linear_on_features
from relic_fast.evaluation.logistic import fit_logistic_on_features, grid_fits
from relic_fast.evaluation.session import EvalSession
from relic_fast.schedules import scaled_lr


def num_classes_of(dataset) -> int:
    """Number of classes of a `DatasetSpec`: its class names, else the largest label + 1."""
    if dataset.class_names:
        return len(dataset.class_names)
    if dataset.labels:
        return max(dataset.labels) + 1
    raise DatasetError(f"{dataset.root}: dataset has no labels; linear evaluation and kNN need labelled data")


def check_same_classes(train_dataset, name: str, val_dataset) -> None:
    """Raise when a validation split's class folders differ from the train split's (indices would not match)."""
    if train_dataset.class_names and val_dataset.class_names and \
            list(train_dataset.class_names) != list(val_dataset.class_names):
        raise DatasetError(f"split {name!r} ({val_dataset.root}) has classes {val_dataset.class_names}, "
                         f"train has {train_dataset.class_names}: class indices would not match")


def eval_loader(dataset, *, train: bool, eval_cfg: EvalConfig, data_cfg: DataConfig,
                device: torch.device | str, seed: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                world: World | None = None, batch_size: int | None = None, checkpoint: str | None = None):
    """The DALI eval loader over `dataset`: train=True random-resized-crop + flip, else resize + centre crop.

    `world`: this rank's shard (DALI pads every shard to the same number of batches, the last ones
    partial, possibly empty); `batch_size`: per rank (default `eval.linear_batch_size`); `checkpoint`:
    a `loader.checkpoint()` to continue from."""
    shard_id, num_shards = (world.rank, world.world_size) if world is not None else (0, 1)
    return build_eval_loader(dataset, image_size=eval_cfg.image_size,
                             batch_size=batch_size or eval_cfg.linear_batch_size, train=train, data=data_cfg,
                             seed=seed, shard_id=shard_id, num_shards=num_shards,
                             device_id=dali_device_for(data_cfg.device, torch.device(device)),
                             mean=mean, std=std, checkpoint=checkpoint)


def rank_batch(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global batch `eval.linear_batch_size` (rounded up)."""
    return math.ceil(batch_size / world_size)


def loader_steps(num_samples: int, world_size: int, batch: int) -> int:
    """Batches of one epoch of every rank's eval loader: the largest shard, ceil(n / ranks), in batches."""
    return math.ceil(math.ceil(num_samples / world_size) / batch)


def dataset_features(encoder: nn.Module, dataset, *, eval_cfg: EvalConfig, data_cfg: DataConfig,
                     device: torch.device | str, seed: int = 0, precision: str = "fp32",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of every sample of `dataset` under the val-style transform, encoder frozen."""
    loader = eval_loader(dataset, train=False, eval_cfg=eval_cfg, data_cfg=data_cfg, device=device,
                         seed=seed, mean=mean, std=std)
    storage = device if torch.device(device).type == "cuda" else "cpu"
    return extract_features(encoder, loader, device, precision=precision, storage_device=storage)


def score_splits(encoder: nn.Module, head: nn.Module, val_datasets: dict, *, eval_cfg: EvalConfig,
                 data_cfg: DataConfig, device: torch.device | str, seed: int = 0, precision: str = "fp32",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict[str, dict[str, float]]:
    """{split: {"top1", "top5"}} of `head` on the frozen `encoder`'s val-style features of each split."""
    data_cfg = dataclasses.replace(data_cfg, drop_last=False, shuffle=False)
    run = _Phases(encoder, EvalSession.local(device), eval_cfg=eval_cfg, data_cfg=data_cfg, device=device,
                  seed=seed, precision=precision, mean=mean, std=std, num_classes=head.linear.out_features)
    return run.score(head, val_datasets, {}, None)


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(top-1 hits, top-k hits, rows) of a batch, int64 on the logits' device (no host sync)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = top == labels.to(logits.device)[:, None]
    return torch.stack([hits[:, :1].any(dim=1).sum(), hits.any(dim=1).sum(),
                        torch.tensor(labels.shape[0], device=logits.device)])


def describe_split(dataset) -> str:
    """A split as the evaluation's identity records it: where it is and how many images it has."""
    return f"{dataset.root} ({dataset.num_samples} images)"


def linear_eval(encoder: nn.Module, *, train_dataset, val_datasets: dict, eval_cfg: EvalConfig,
                data_cfg: DataConfig, device: torch.device | str, seed: int = 0, precision: str = "fp32",
                mean=IMAGENET_MEAN, std=IMAGENET_STD,
                log: Callable[[str], None] | None = None, session: EvalSession | None = None) -> dict:
    """Linear evaluation of a frozen `encoder`: fit on `train_dataset`, report each of `val_datasets`.

    Returns {"top1", "top5"} of the split named "val" (else the first split), "splits": {name:
    {"top1", "top5"}}, the settings used (mode, epochs, batch, lr, sizes; all in percent) and "cost"
    (`EvalSession.cost`: features/s per device).

    `session` (`relic_fast.evaluation.session`): the ranks under torchrun, stop signals, checkpoints and
    `--resume`, the live display and the head file; None: one process, none of those. With several
    ranks each reads its shard of every split: `augmented` all-reduces the head's gradients (the
    global batch is `eval.linear_batch_size`, each rank a share); `cached_features` and `logistic`
    all-gather the train features in dataset order and every rank fits the same problem, the exact
    route to one process's head (every rank holds all N x F features: 10 GB for ImageNet's train split
    at F = 2048 in float32); scoring all-reduces the hit counts. Rank 0 writes; every rank returns the
    same result.
    """
    if not val_datasets:
        raise DatasetError("linear evaluation needs at least one validation split")
    session = session or EvalSession.local(device, log=log)
    world = session.world
    data_cfg = dataclasses.replace(data_cfg, drop_last=False, shuffle=False)
    num_classes = num_classes_of(train_dataset)
    for name, dataset in val_datasets.items():
        check_same_classes(train_dataset, name, dataset)
    encoder = encoder.to(device).to(memory_format=torch.channels_last)
    mode = eval_cfg.linear_mode
    num_samples = train_dataset.num_samples
    batch = min(eval_cfg.linear_batch_size, num_samples)  # the global batch of the SGD modes' lr rule
    run = _Phases(encoder, session, eval_cfg=eval_cfg, data_cfg=data_cfg, device=device, seed=seed,
                  precision=precision, mean=mean, std=std, num_classes=num_classes)
    train_steps = loader_steps(num_samples, world.world_size, run.per_rank)
    if mode == "augmented":
        phases = {"augmented": eval_cfg.linear_epochs * train_steps}
    elif mode == "cached_features":
        phases = {"extract": train_steps, "fit": eval_cfg.linear_epochs * math.ceil(num_samples / batch)}
    else:
        phases = {"extract": train_steps, "fit": grid_fits(eval_cfg.linear_l2_grid)}
    phases["score"] = sum(loader_steps(d.num_samples, world.world_size, run.per_rank) for d in val_datasets.values())
    identity = {"eval": {key: getattr(eval_cfg, key) for key in RESULT_KEYS}, "seed": seed, "precision": precision,
                "mean": list(mean), "std": list(std), "feature_dim": int(encoder.feature_dim),
                "train_split": describe_split(train_dataset),
                "val_splits": {name: describe_split(d) for name, d in val_datasets.items()}}
    with session.running(identity, sum(phases.values()), phases):
        saved = session.saved
        if saved is not None and saved["phase"] == "score":
            head, info = run.restore_head(saved), saved["info"]
        elif mode == "augmented":
            head, info = run.augmented(train_dataset, batch, saved)
        else:
            head, info = run.cached(train_dataset, batch, saved)
        splits = run.score(head, val_datasets, info, saved if saved is not None and saved["phase"] == "score" else None)
        cost = session.cost()
    scored_on = "val" if "val" in splits else next(iter(splits))
    headline = splits[scored_on]
    batch = info.get("batch_size", batch)
    probe_info = {key: info[key] for key in ("l2", "holdout_top1") if key in info}
    result = {"top1": headline["top1"], "top5": headline["top5"], "splits": splits,
              "mode": mode, "feature_norm": eval_cfg.linear_feature_norm,
              "epochs": eval_cfg.linear_epochs, "batch_size": batch,
              "base_lr": eval_cfg.linear_base_lr, "lr": scaled_lr(eval_cfg.linear_base_lr, batch),
              "image_size": eval_cfg.image_size, "num_classes": num_classes, "feature_dim": int(info["feature_dim"]),
              "train_samples": num_samples,
              "val_samples": {name: d.num_samples for name, d in val_datasets.items()},
              "top5_k": min(5, num_classes), "precision": precision, "seed": seed, **probe_info,
              "devices": world.world_size, "cost": cost}
    if session.folder is not None:
        path = session.folder / HEAD_FILE
        if world.is_main:
            save_head(path, head_payload(head, class_names=train_dataset.class_names,
                                         info={**session.head_info, "mode": mode, "top1": headline["top1"],
                                               "top5": headline["top5"], "top5_k": min(5, num_classes),
                                               "scored_on": scored_on}))
        result["head"] = str(path)
    return result


RESULT_KEYS = ("linear_mode", "linear_epochs", "linear_batch_size", "linear_base_lr", "linear_l2_grid",
               "linear_feature_norm", "image_size")
"""The `[eval]` keys a linear evaluation's result depends on: `--resume` refuses a change of any of them."""


class _Phases:
    """The phases of one `linear_eval` (see `relic_fast.evaluation.session`), each resumable from the state
    its steps hand to `EvalSession.boundary`."""

    def __init__(self, encoder: nn.Module, session: EvalSession, *, eval_cfg: EvalConfig, data_cfg: DataConfig,
                 device: torch.device | str, seed: int, precision: str, mean, std, num_classes: int):
        self.encoder, self.session, self.world = encoder, session, session.world
        self.eval_cfg, self.data_cfg, self.device, self.seed = eval_cfg, data_cfg, torch.device(device), seed
        self.precision, self.mean, self.std, self.num_classes = precision, mean, std, num_classes
        self.per_rank = rank_batch(eval_cfg.linear_batch_size, self.world.world_size)
        self.storage = self.device if self.device.type == "cuda" else torch.device("cpu")

    def loader(self, dataset, *, train: bool, saved: dict | None):
        """This rank's eval loader over `dataset`, at the position `saved` (a phase state) recorded for it."""
        return eval_loader(dataset, train=train, eval_cfg=self.eval_cfg, data_cfg=self.data_cfg, device=self.device,
                           seed=self.seed, mean=self.mean, std=self.std, world=self.world, batch_size=self.per_rank,
                           checkpoint=saved["loader"][self.world.rank] if saved is not None else None)

    def positions(self, loader) -> list[str]:
        """Every rank's position of `loader` (a collective)."""
        return self.session.gather_objects(loader.checkpoint())

    # ---------------------------------------------------------------- training the probe
    def augmented(self, dataset, batch: int, saved: dict | None) -> tuple[LinearProbe, dict]:
        """The paper's protocol: SGD on random crops, the encoder running on every batch."""
        session, cfg = self.session, self.eval_cfg
        resume = saved if saved is not None and saved["phase"] == "augmented" else None
        loader = self.loader(dataset, train=True, saved=resume)
        steps_per_epoch = len(loader)
        info = {"batch_size": batch, "feature_dim": int(self.encoder.feature_dim)}
        session.phase(f"augmented: {cfg.linear_epochs} epochs x {steps_per_epoch} steps, global batch {batch} "
                      f"({self.per_rank} per device)")

        def on_step(step, rows, loss_sum, batches, state):
            session.count(rows, lambda: {"epoch": step / steps_per_epoch, "loss": loss_sum.item() / max(batches, 1)})
            session.boundary(lambda: {"phase": "augmented", **state(), "loader": self.positions(loader), "info": info})

        with session.encoding():
            head = fit_linear_augmented(self.encoder, loader, steps_per_epoch=steps_per_epoch,
                                        feature_dim=info["feature_dim"], num_classes=self.num_classes,
                                        epochs=cfg.linear_epochs, batch_size=batch, base_lr=cfg.linear_base_lr,
                                        device=self.device, precision=self.precision,
                                        feature_norm=cfg.linear_feature_norm,
                                        on_epoch=lambda epoch, loss: session.epoch_done(epoch, cfg.linear_epochs, loss),
                                        world=self.world, resume=resume, on_step=on_step)
        return head, info

    def cached(self, dataset, batch: int, saved: dict | None) -> tuple[LinearProbe, dict]:
        """`cached_features` and `logistic`: the train features once (all ranks' shards, gathered), then the fit."""
        session, cfg = self.session, self.eval_cfg
        if saved is not None and saved["phase"] == "fit":
            features, labels = saved["train_features"].to(self.storage), saved["train_labels"].to(self.storage)
        else:
            part_done = saved if saved is not None and saved["phase"] == "extract" else None
            features, labels = self.extract(dataset, part_done)
        resume = saved["fit"] if saved is not None and saved["phase"] == "fit" else None
        info: dict = {"feature_dim": int(features.shape[1])}

        def fit_state(state: Callable[[], dict]) -> Callable[[], dict]:
            main = self.world.is_main  # every rank holds the same features; only rank 0's state is written
            return lambda: {"phase": "fit", "train_features": features.cpu() if main else None,
                            "train_labels": labels.cpu() if main else None, "fit": state(), "info": info}

        if cfg.linear_mode == "logistic":
            session.phase(f"logistic: {grid_fits(cfg.linear_l2_grid)} L-BFGS fit(s) on {features.shape[0]} x "
                          f"{features.shape[1]} features")
            head, probe_info = fit_logistic_on_features(features, labels, num_classes=self.num_classes,
                                                        l2_grid=cfg.linear_l2_grid, seed=self.seed, device=self.device,
                                                        resume=resume,
                                                        on_fit=lambda state: session.boundary(fit_state(state)))
            info.update(probe_info, batch_size=int(features.shape[0]))
            session.boundary(lambda: self.score_state(head, info, {}, None, None, None))  # the last fit's step
        else:
            session.phase(f"cached_features: {cfg.linear_epochs} epochs of SGD on {features.shape[0]} x "
                          f"{features.shape[1]} features")
            info["batch_size"] = batch
            head = fit_linear_on_features(features, labels, num_classes=self.num_classes, epochs=cfg.linear_epochs,
                                          batch_size=batch, base_lr=cfg.linear_base_lr, seed=self.seed,
                                          device=self.device, feature_norm=cfg.linear_feature_norm, resume=resume,
                                          on_step=lambda step, rows, loss_sum, batches, state:
                                          session.boundary(fit_state(state)))
        return head, info

    def extract(self, dataset, saved: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Val-style features and labels of every sample of `dataset`, in dataset order, on every rank: each
        rank encodes its shard (continuing a saved pass), then the shards are all-gathered."""
        session = self.session
        loader = self.loader(dataset, train=False, saved=saved)
        start = None
        if saved is not None:
            start = ([session.my_rows(saved["features"], saved["rows"]).to(self.storage)],
                     [session.my_rows(saved["labels"], saved["rows"]).to(self.storage)])
        session.phase(f"extract: the train split's features ({dataset.num_samples} images)")

        def on_batch(features: list[torch.Tensor], labels: list[torch.Tensor]) -> None:
            session.count(features[-1].shape[0])
            session.boundary(lambda: self.extract_state(loader, features, labels))

        with session.encoding():
            features, labels = extract_features(self.encoder, loader, self.device, precision=self.precision,
                                                storage_device=self.storage, start=start, on_batch=on_batch)
        first, last = shard_bounds(dataset.num_samples, self.world.rank, self.world.world_size)
        features, labels = features[:last - first], labels[:last - first]  # DALI returns no padding; be sure
        return all_gather_rows(features, self.world), all_gather_rows(labels, self.world)

    def extract_state(self, loader, features: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
        """A part-done extraction: every rank's rows so far (gathered) and loader position."""
        rows, counts = self.session.gather_rows(torch.cat(features))
        label_rows, _ = self.session.gather_rows(torch.cat(labels))
        main = self.world.is_main  # only rank 0's state is written
        return {"phase": "extract", "features": rows.cpu() if main else None,
                "labels": label_rows.cpu() if main else None, "rows": counts, "loader": self.positions(loader)}

    # ---------------------------------------------------------------- scoring
    def score_state(self, head: LinearProbe, info: dict, splits: dict, split: str | None, loader,
                    counts: torch.Tensor | None) -> dict:
        """The scoring phase's state: the head, the finished splits, and the split under way (every rank's
        position and hit counts so far)."""
        return {"phase": "score", "head": head.state_dict(), "info": info,
                "head_config": {"feature_dim": head.linear.in_features, "num_classes": head.linear.out_features,
                                "feature_norm": "batchnorm" if isinstance(head.norm, nn.BatchNorm1d) else "none",
                                "eps": float(getattr(head.norm, "eps", 0.0))},
                "splits": dict(splits), "split": split,
                "loader": self.positions(loader) if loader is not None else None,
                "counts": self.session.gather_objects(counts.cpu()) if counts is not None else None}

    def restore_head(self, saved: dict) -> LinearProbe:
        """The trained head a scoring-phase checkpoint holds."""
        config = saved["head_config"]
        head = LinearProbe(config["feature_dim"], config["num_classes"], config["feature_norm"])
        head.load_state_dict(saved["head"])
        if config["feature_norm"] == "batchnorm":
            head.norm.eps = config["eps"]
        return head.to(self.device).eval()

    def score(self, head: LinearProbe, val_datasets: dict, info: dict, saved: dict | None) -> dict[str, dict]:
        """{split: {"top1", "top5"}}: each rank scores its shard of each split, the hits are all-reduced."""
        session, head = self.session, head.to(self.device).eval()
        splits: dict[str, dict] = dict(saved["splits"]) if saved is not None else {}
        k = min(5, self.num_classes)
        for name, dataset in val_datasets.items():
            if name in splits:
                continue
            here = saved if saved is not None and saved["split"] == name else None
            loader = self.loader(dataset, train=False, saved=here)
            counts = (here["counts"][self.world.rank].to(self.device).clone() if here is not None
                      else torch.zeros(3, dtype=torch.int64, device=self.device))
            session.phase(f"score: {name} ({dataset.num_samples} images)")
            with frozen(self.encoder), session.encoding(), torch.no_grad():
                for images, labels in loader:
                    labels = torch.as_tensor(labels).flatten().long().to(self.device, non_blocking=True)
                    counts += topk_hits(head(encode(self.encoder, images, self.device, self.precision)), labels, k)
                    session.count(labels.shape[0])
                    session.boundary(lambda: self.score_state(head, info, splits, name, loader, counts))
            top1, topk, rows = session.sum(counts).tolist()
            splits[name] = ({"top1": 100.0 * top1 / rows, "top5": 100.0 * topk / rows} if rows
                            else {"top1": math.nan, "top5": math.nan})
        return splits


def knn_eval(encoder: nn.Module, *, train_dataset, val_dataset, eval_cfg: EvalConfig, data_cfg: DataConfig,
             device: torch.device | str, precision: str = "fp32", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> float:
    """kNN monitor accuracy (percent): val-style features of both splits, k and T from `eval_cfg`."""
    data_cfg = dataclasses.replace(data_cfg, drop_last=False, shuffle=False)
    check_same_classes(train_dataset, "val", val_dataset)
    common = dict(eval_cfg=eval_cfg, data_cfg=data_cfg, device=device, precision=precision, mean=mean, std=std)
    train_features, train_labels = dataset_features(encoder, train_dataset, **common)
    val_features, val_labels = dataset_features(encoder, val_dataset, **common)
    return knn_accuracy(train_features, train_labels, val_features, val_labels, k=eval_cfg.knn_k,
                        temperature=eval_cfg.knn_temperature, num_classes=num_classes_of(train_dataset))
