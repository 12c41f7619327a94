"""What `pretrain --resume` may change, in one table: every config key either may change or is refused.

A resumed run is meant to be the run that was never stopped. So every key of every config section has one
line in `RULES` (a test fails for a key without one): it *may change* when the run stays the same run
(where it stops, cadences, threads, devices and compilation, monitoring), and it is *refused* (exit 6,
`ResumeMismatchError`, every changed key named in one line) when a change would make the resumed run differ
from an uninterrupted one: the data and its order, the views, the networks, the loss, the optimizer, the
schedules, the seed, the batch. Two more things are compared as if they were keys: `dataset`, the images
themselves (their fingerprint: `dataset_fingerprint`), and `ranks`, the number of processes.

`pretrain --resume --accept-change KEY` goes on with a refused change on purpose, and then the new value
takes effect for real: the optimizer takes the config's hyper-parameters over its saved ones, the schedules
follow the new curves from the saved step, and a change to the data or its order (`Rule.restarts_data`)
restarts the data order at the current epoch, since the saved position belongs to the old order. Keys whose
saved weights cannot take another value (`Rule.acceptable = False`: the networks' shapes) are refused even
then. The README's "Running on a cluster" section shows this table; a test keeps the two in step.

Refused keys are compared as they run, resolved on the machine, where the checkpoint recorded that
(`views.interpolation = "auto"` is linear on a CPU pipeline and cubic on a GPU one: "auto" -> "linear" on a
CPU is the same run), else as asked (`config.toml`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from relic_fast.config import ConfigError, config_from_dict, section_names

MAY_CHANGE = "may change"
REFUSED = "refused"
DATASET = "dataset"
"""The pseudo-key of the images themselves (`dataset_fingerprint`)."""
RANKS = "ranks"
"""The pseudo-key of the number of processes (the data position and random state are saved per rank)."""
PSEUDO_KEYS = (DATASET, RANKS)


@dataclass(frozen=True)
class Rule:
    """What `--resume` does with a change of one key."""

    verdict: str
    """`MAY_CHANGE` or `REFUSED`."""
    why: str
    """What the key decides: why it may change, or what a change would alter (the README's words)."""
    acceptable: bool = True
    """A refused change that `--accept-change KEY` lets through (False: the saved weights cannot take it)."""
    restarts_data: bool = False
    """Accepted, the saved data position no longer applies: the data order restarts at the current epoch."""


_RULE_GROUPS: tuple[tuple[tuple[str, ...], Rule], ...] = (
    (("train.max_steps",),
     Rule(MAY_CHANGE, "where this invocation stops (`--steps`); the schedules span `train.epochs`")),
    (("train.log_every", "train.checkpoint_every", "train.checkpoint_minutes", "train.keep_checkpoints"),
     Rule(MAY_CHANGE, "how often the run logs and checkpoints")),
    (("data.num_threads", "data.prefetch_queue_depth"),
     Rule(MAY_CHANGE, "DALI's threads and queue depth: the same batches")),
    (("train.device", "train.compile", "train.compile_mode", "train.compile_scope", "train.compile_cache",
      "train.channels_last", "loss.implementation", "model.activation_checkpointing"),
     Rule(MAY_CHANGE, "where and how the same arithmetic runs (kernels, compilation, recomputation: float "
                      "rounding at most)")),
    (("data.val", "data.val_labels", "train.knn_every_epochs", "eval.linear_epochs", "eval.linear_batch_size",
      "eval.linear_base_lr", "eval.linear_mode", "eval.linear_l2_grid", "eval.linear_feature_norm",
      "eval.image_size", "eval.checkpoint_minutes", "eval.knn_k", "eval.knn_temperature", "eval.online_probe",
      "eval.online_probe_lr"),
     Rule(MAY_CHANGE, "monitoring and linear evaluation, which never touch the encoder; an online probe whose "
                      "settings changed restarts from zero, and the run says so")),
    (("data.path", "data.format", "data.masks", "data.on_bad_file", "data.max_image_mb"),
     Rule(MAY_CHANGE, "where and how the images are found; `dataset` (below) decides whether they are the "
                      "same images")),
    ((DATASET,),
     Rule(REFUSED, "the images: their count, a SHA-256 of the file list with labels and class names, and (with "
                   "saliency) how many have a mask; dropping unreadable files (`relic-fast index`, "
                   "`data.on_bad_file = \"skip\"`) changes it", restarts_data=True)),
    (("data.classes", "data.shuffle", "data.drop_last", "train.seed"),
     Rule(REFUSED, "which images, in which order (the seed also draws the augmentations and sampled "
                   "negatives)", restarts_data=True)),
    (("data.device", "views.num_large", "views.num_small", "views.large_size", "views.small_size",
      "views.large_area", "views.small_area", "views.aspect_ratio", "views.flip_p", "views.jitter_p",
      "views.brightness", "views.brightness_mode", "views.contrast", "views.saturation", "views.hue",
      "views.jitter_order", "views.jitter_clip", "views.interpolation", "views.grayscale_p", "views.blur_p",
      "views.blur_sigma", "views.solarize_p", "views.saliency_p", "views.saliency_fill", "views.mean",
      "views.std"),
     Rule(REFUSED, "the augmentations and the DALI graph that draws them (an `auto` resolved otherwise on this "
                   "machine counts)", restarts_data=True)),
    (("train.batch_size", RANKS),
     Rule(REFUSED, "the global batch and how many ranks share it (data position and random state are saved "
                   "per rank)", restarts_data=True)),
    (("model.encoder", "model.width", "model.small_stem", "model.projector_hidden", "model.embedding_dim",
      "model.predictor_hidden", "model.zero_init_residual"),
     Rule(REFUSED, "the networks the saved weights belong to, and their init: start a new run",
          acceptable=False)),
    (("model.sync_batchnorm",),
     Rule(REFUSED, "BatchNorm statistics pooled over ranks (CUDA)")),
    (("loss.temperature", "loss.beta", "loss.num_negatives", "loss.gather_targets"),
     Rule(REFUSED, "the loss")),
    (("optim.weight_decay", "optim.momentum", "optim.trust_coefficient"),
     Rule(REFUSED, "LARS's hyper-parameters; accepted, they replace the saved optimizer's (its momentum "
                   "buffers carry over)")),
    (("optim.implementation",),
     Rule(REFUSED, "another optimizer (apex's FusedLARS is not BYOL's LARS), whose state does not carry over: "
                   "start a new run", acceptable=False)),
    (("optim.base_lr", "optim.warmup_epochs", "optim.tau_base", "train.epochs"),
     Rule(REFUSED, "the learning-rate and EMA schedules (`train.epochs` sets their length); accepted, lr and "
                   "tau follow the new curves from the saved step on")),
    (("train.precision",),
     Rule(REFUSED, "the arithmetic: bf16, fp16 (with its gradient scaler) or fp32")),
)

RULES: dict[str, Rule] = {key: rule for keys, rule in _RULE_GROUPS for key in keys}
"""Every config key (`section.key`) and pseudo-key (`dataset`, `ranks`) -> its rule."""


def rule_groups() -> tuple[tuple[tuple[str, ...], Rule], ...]:
    """The rule as the README's table shows it: groups of keys sharing one rule, in table order."""
    return _RULE_GROUPS


def check_accept_keys(keys: Iterable[str]) -> frozenset[str]:
    """The keys `--accept-change` named, each checked against the rule (a typo would accept nothing)."""
    keys = frozenset(keys)
    unknown = sorted(keys - RULES.keys())
    if unknown:
        raise ConfigError(f"--accept-change {unknown[0]}: neither a config key (section.key) nor "
                          f"{' or '.join(PSEUDO_KEYS)}; the README's resume table (Running on a cluster) lists them")
    return keys


def dataset_fingerprint(dataset: Any, masks: Any = None) -> dict[str, Any]:
    """What identifies a training dataset across a resume, whatever path or format it is read from: its image
    count, its class count, a SHA-256 of its file list with labels and class names (relative paths, so a moved
    copy matches), and how many images have a saliency mask (`masks`, a `MaskCoverage`; None when the recipe
    does not mask). `dataset` is a `dali_pipelines.dataset.DatasetSpec`."""
    digest = hashlib.sha256()
    digest.update("\n".join(f"class {name}" for name in dataset.class_names).encode())
    digest.update("\n".join(f"{file}\t{label}" for file, label in zip(dataset.files, dataset.labels)).encode())
    digest.update("\n".join(f"shard {Path(tar).name}" for tar in dataset.tar_paths).encode())
    return {"images": dataset.num_samples, "classes": len(dataset.class_names), "sha256": digest.hexdigest(),
            "masks": None if masks is None else masks.with_mask}


@dataclass(frozen=True)
class RunIdentity:
    """What the rule compares between a checkpoint and the run asked now."""

    config: dict[str, dict[str, Any]]
    """The config as asked (`Config.to_dict()`: what `config.toml` records)."""
    resolved: dict[str, dict[str, Any]] | None
    """The config with every "auto" resolved on the machine (None: a checkpoint older than this record)."""
    dataset: dict[str, Any] | None
    """`dataset_fingerprint` (None: unknown; an older checkpoint's holds the image count only)."""
    ranks: int
    """The number of processes (torchrun's world size)."""

    def to_state(self) -> dict[str, Any]:
        """The checkpoint's entries of this identity."""
        return {"config": self.config, "resolved_config": self.resolved, "dataset": self.dataset,
                "world_size": self.ranks}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RunIdentity":
        """The identity a checkpoint recorded; older checkpoints lack the resolved config and the fingerprint
        (their image count is read from the loader's position instead)."""
        dataset = state.get("dataset")
        if dataset is None and state.get("loader"):
            try:
                dataset = {"images": json.loads(state["loader"][0])["fingerprint"]["samples"]}
            except (ValueError, KeyError, TypeError):
                dataset = None
        return cls(config=_today(state["config"]), resolved=state.get("resolved_config"), dataset=dataset,
                   ranks=state["world_size"])


def _today(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A saved config in today's spellings and with today's keys (older spellings read as they are now, keys
    added since at their defaults), so that only real changes compare unequal; as saved if it cannot be read."""
    try:
        return config_from_dict(config, source="the checkpoint's config", warn_legacy=False).to_dict()
    except ConfigError:
        return config


@dataclass(frozen=True)
class Change:
    """One key whose value differs between the checkpoint and the run asked now."""

    key: str
    old: Any
    new: Any
    rule: Rule
    resolved: tuple[Any, Any] | None = None
    """(in the checkpoint, here) when the asked values agree and only their resolution differs."""

    @property
    def refused(self) -> bool:
        """Whether the rule refuses this change unless it is accepted."""
        return self.rule.verdict == REFUSED

    def describe(self) -> str:
        """The change in the refusal's words: `key = old in the checkpoint, new now`."""
        if self.key == DATASET:
            return f"dataset: {_describe_dataset(self.old)} in the checkpoint, {_describe_dataset(self.new)} now"
        if self.resolved is not None:
            return (f"{self.key} = {self.old!r}, resolved to {self.resolved[0]!r} in the checkpoint and to "
                    f"{self.resolved[1]!r} here")
        return f"{self.key} = {self.old!r} in the checkpoint, {self.new!r} now"

    def short(self) -> str:
        """The change as `key old -> new`, for the line that reports accepted changes."""
        if self.key == DATASET:
            return f"dataset {_describe_dataset(self.old)} -> {_describe_dataset(self.new)}"
        old, new = self.resolved if self.resolved is not None else (self.old, self.new)
        return f"{self.key} {old!r} -> {new!r}"

    def record(self) -> dict[str, Any]:
        """The change as metrics.jsonl records it: {"old": ..., "new": ...} (resolved values where those differ)."""
        old, new = self.resolved if self.resolved is not None else (self.old, self.new)
        return {"old": old, "new": new}


def _describe_dataset(fingerprint: dict[str, Any]) -> str:
    """`N images (files 1a2b3c4d5e6f, M with a mask)` of a fingerprint (its known parts)."""
    details = []
    if fingerprint.get("sha256"):
        details.append(f"files {fingerprint['sha256'][:12]}")
    if fingerprint.get("masks") is not None:
        details.append(f"{fingerprint['masks']} with a mask")
    return f"{fingerprint['images']} images" + (f" ({', '.join(details)})" if details else "")


def _plain(value: Any) -> Any:
    """Tuples as lists, so a config read back from a checkpoint compares equal to a fresh one."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _dataset_changed(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two fingerprints name different images (only the parts both recorded are compared)."""
    shared = [key for key in ("images", "classes", "sha256", "masks") if old.get(key) is not None
              and new.get(key) is not None]
    return any(old[key] != new[key] for key in shared)


def resume_changes(saved: RunIdentity, now: RunIdentity) -> list[Change]:
    """Every key (config order, then `dataset` and `ranks`) whose value differs between `saved` and `now`."""
    changes = []
    for section in section_names():
        old_section, new_section = saved.config.get(section, {}), now.config.get(section, {})
        for key in new_section:
            name = f"{section}.{key}"
            rule = RULES.get(name, Rule(REFUSED, "not in the rule yet"))  # refused until classified
            old, new = _plain(old_section.get(key, new_section[key])), _plain(new_section[key])
            if rule.verdict == REFUSED and saved.resolved is not None and now.resolved is not None:
                # what runs decides: "auto" -> "linear" on a CPU pipeline is the same run, "auto" on a GPU is not
                resolved = (_plain(saved.resolved.get(section, {}).get(key, old)),
                            _plain(now.resolved.get(section, {}).get(key, new)))
                if resolved[0] != resolved[1]:
                    changes.append(Change(name, old, new, rule, resolved if old == new else None))
            elif old != new:
                changes.append(Change(name, old, new, rule))
    if saved.dataset is not None and now.dataset is not None and _dataset_changed(saved.dataset, now.dataset):
        changes.append(Change(DATASET, saved.dataset, now.dataset, RULES[DATASET]))
    if saved.ranks != now.ranks:
        changes.append(Change(RANKS, saved.ranks, now.ranks, RULES[RANKS]))
    return changes


def refusal(path: Path, blocked: list[Change]) -> str:
    """The one-line message of a refused resume: every blocked change, then the ways on."""
    message = f"{path}: --resume would not continue the same run: {'; '.join(c.describe() for c in blocked)}."
    acceptable = [c.key for c in blocked if c.rule.acceptable]
    fixed = [c.key for c in blocked if not c.rule.acceptable]
    if acceptable:
        message += (" To go on with the new values on purpose: "
                    + " ".join(f"--accept-change {key}" for key in acceptable))
        if DATASET in acceptable:
            message += (" (the images differ, e.g. unreadable files dropped after `relic-fast index` or with "
                        "data.on_bad_file = \"skip\"; the data order then restarts at the current epoch)")
        message += "."
    if fixed:
        message += f" {', '.join(fixed)} cannot change: the saved weights belong to the checkpoint's value."
    return message + (" Or resume with the saved config (config.toml in the run folder), or start a new run in "
                      "another --out folder")
