"""The typed config sections of the training side, one per component (`[model]`, `[loss]`, `[optim]`,
`[train]`, `[eval]`): frozen dataclasses, a docstring under each field, validation next to it. The data side's
sections (`[data]`, `[views]`) are `dali_pipelines.recipe`'s; `relic_fast.config` assembles them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dali_pipelines.recipe import check

@dataclass(frozen=True)
class ModelConfig:
    """Encoder, projector and predictor (`[model]`)."""

    encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200"] = "resnet50"
    """ResNet depth of the online and target encoders."""

    width: int = 1
    """Width multiplier applied to the stem and every stage (SimCLR-style 1x, 2x, 4x)."""

    small_stem: bool = False
    """Use a 3x3 stride-1 stem without max pooling (for images under 64 px)."""

    projector_hidden: int = 4096
    """Hidden width of the projector MLP."""

    embedding_dim: int = 256
    """Output size of the projector and the predictor: the space the loss compares in."""

    predictor_hidden: int = 4096
    """Hidden width of the predictor MLP."""

    zero_init_residual: bool = True
    """Start the last BatchNorm gamma of every residual block at 0, so each block starts as the identity
    (BYOL's init, used for pretraining); false: torchvision's default init. The random-init baseline of
    `linear-eval --random-init` and `experiment` is always the default init."""

    sync_batchnorm: bool = True
    """Synchronize BatchNorm statistics across ranks under DDP (SyncBatchNorm; CUDA only: CPU/gloo runs
    keep per-rank statistics)."""

    activation_checkpointing: bool = False
    """Recompute each residual stage of the online encoder in backward instead of keeping its
    activations: less memory for one more encoder forward per step (figures in the README's memory
    table), e.g. so that 512 images per GPU, the paper's batch on one 8-GPU node, fit in 80 GB.
    Gradients and BatchNorm running statistics are those of a run without it."""

    def __post_init__(self) -> None:
        check(self.width in (1, 2, 4), "width", f"choose 1, 2 or 4, got {self.width}")
        for name in ("projector_hidden", "embedding_dim", "predictor_hidden"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class LossConfig:
    """The RELICv2 multi-view loss (`[loss]`)."""

    temperature: float = 0.2
    """Softmax temperature of the similarity logits (to confirm)."""

    beta: float = 1.0
    """Weight of the invariance (KL) term relative to the contrastive term (to confirm)."""

    num_negatives: int = 0
    """Negatives per anchor: 0 means every other sample of the (global) batch; N > 0 samples N."""

    implementation: Literal["auto", "reference", "fused"] = "auto"
    """`reference`: plain PyTorch; `fused`: the Triton kernel; `auto`: fused on CUDA, else reference."""

    gather_targets: bool = True
    """Under DDP, contrast local onlines against the all-gathered targets of every rank."""

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        check(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        check(self.num_negatives >= 0, "num_negatives", f"must be >= 0, got {self.num_negatives}")


@dataclass(frozen=True)
class OptimConfig:
    """LARS, learning-rate and EMA schedules (`[optim]`)."""

    base_lr: float = 0.2
    """Learning rate per 256 images: lr = base_lr * global_batch / 256."""

    weight_decay: float = 1.5e-6
    """Weight decay (added before the LARS scaling; not applied to biases and norm parameters)."""

    momentum: float = 0.9
    """LARS momentum."""

    trust_coefficient: float = 1e-3
    """LARS trust coefficient eta."""

    warmup_epochs: float = 10.0
    """Linear warm-up length in epochs, then cosine decay to 0."""

    tau_base: float = 0.996
    """Initial EMA decay of the target network; rises to 1 on a cosine."""

    implementation: Literal["auto", "reference", "apex"] = "auto"
    """LARS implementation: `reference` (torch multi-tensor ops, BYOL's exact LARS), `apex` (NVIDIA
    apex's FusedLARS, when importable; its trust ratio uses ||g||, not BYOL's ||g + wd*p||), `auto`
    (reference: apex is never picked silently because it is not the same optimizer)."""

    def __post_init__(self) -> None:
        check(self.base_lr > 0, "base_lr", f"must be > 0, got {self.base_lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0 <= self.momentum < 1, "momentum", f"expected [0, 1), got {self.momentum}")
        check(self.trust_coefficient > 0, "trust_coefficient", f"must be > 0, got {self.trust_coefficient}")
        check(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        check(0 <= self.tau_base <= 1, "tau_base", f"expected [0, 1], got {self.tau_base}")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (`[train]`)."""

    batch_size: int = 4096
    """Global batch (images) across all ranks; each rank takes batch_size / world_size."""

    epochs: int = 1000
    """Length of the run in epochs (sets the schedules)."""

    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs). `--steps` sets it."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Device of the networks; `auto` picks the GPU when CUDA is available (`relic_fast.run_plan`)."""

    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the step: `auto` compiles on CUDA only."""

    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode of the compiled step: `reduce-overhead` replays it as CUDA graphs (no
    per-kernel launch cost; inputs copied into static buffers), `max-autotune` also benchmarks kernel
    choices while compiling (a much longer first step) and uses CUDA graphs, `-no-cudagraphs` without."""

    compile_scope: Literal["forward", "blocks"] = "forward"
    """What is compiled: `forward` the whole loss forward (online, target, loss) as static graphs, or
    `blocks` each residual block on its own (regional compilation: blocks of one shape share a graph,
    so the warm-up is shorter; stems, heads and the loss run eager). See `relic_fast.compiling`."""

    compile_cache: str = ""
    """Folder of inductor's on-disk compile caches, so that `--resume` and later runs start warm: a
    relative path is inside the run folder (e.g. "compile-cache"), an absolute one is shared by every
    run that names it; empty: inductor's default (a per-user folder under the system temp dir)."""

    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Autocast dtype (fp16 adds a gradient scaler; fp32 disables autocast)."""

    channels_last: bool = True
    """Keep activations and weights in channels-last (NHWC) memory format."""

    seed: int = 0
    """Seed of weights, data order and augmentation."""

    log_every: int = 10
    """Steps between metric reads (host syncs) and metrics.jsonl lines."""

    checkpoint_every: int = 1000
    """Steps between checkpoints (one is also written at the end)."""

    checkpoint_minutes: float = 0.0
    """Also checkpoint when this many minutes have passed since the last checkpoint (0: off), so a long
    `checkpoint_every` cannot lose hours; under torchrun rank 0's clock decides for every rank."""

    keep_checkpoints: int = 3
    """Checkpoints kept in RUN_DIR/checkpoints (older ones are deleted)."""

    knn_every_epochs: int = 0
    """Run the kNN monitor on the labelled validation split every N epochs (0: never)."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 2, "batch_size", f"must be >= 2, got {self.batch_size}")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        for name in ("max_steps", "knn_every_epochs"):
            check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.checkpoint_minutes >= 0, "checkpoint_minutes",
              f"must be >= 0 (0: off), got {self.checkpoint_minutes}")


@dataclass(frozen=True)
class EvalConfig:
    """Linear evaluation and the kNN monitor (`[eval]`)."""

    linear_epochs: int = 100
    """Epochs of linear-classifier training."""

    linear_batch_size: int = 1024
    """Batch size of linear evaluation."""

    linear_base_lr: float = 0.3
    """SGD learning rate per 256 images (Nesterov momentum 0.9, no weight decay, cosine)."""

    linear_mode: Literal["augmented", "cached_features", "logistic"] = "augmented"
    """`augmented`: the paper's protocol (random-resized-crop + flip each epoch); `cached_features`:
    extract features once without augmentation and fit on them with SGD (fast, for small data);
    `logistic`: cached features, standardized, multinomial logistic regression fitted to convergence by
    L-BFGS with its L2 penalty picked from `linear_l2_grid` on a held-out fifth of train (the same strong
    probe for every encoder: `relic_fast.evaluation.logistic`; ignores the SGD keys)."""

    linear_l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    """`logistic` mode: L2 penalties (on the mean cross-entropy) tried; one value skips the holdout."""

    linear_feature_norm: Literal["none", "batchnorm"] = "none"
    """`none`: the paper's probe, one nn.Linear on the raw pooled features; `batchnorm`: standardize the
    features first with a BatchNorm1d without affine parameters (MAE's probe; still linear, it can be
    folded into the layer), which makes the probe's lr independent of the feature scale: fairer
    between encoders whose features differ in scale (a random init's are tiny), useful for small data."""

    image_size: int = 224
    """Evaluation crop size (the short side is resized to size * 256 / 224 first)."""

    checkpoint_minutes: float = 0.0
    """`linear-eval --out DIR`: also checkpoint every this many minutes (0: only on SIGTERM, SIGINT or
    SIGUSR1, which always checkpoint and stop with exit 75); `--resume` continues from the newest."""

    knn_k: int = 20
    """Neighbours voting in the kNN monitor."""

    knn_temperature: float = 0.07
    """Temperature of the kNN monitor's similarity-weighted votes."""

    online_probe: bool = False
    """While pretraining: a linear head on the online encoder's detached pooled features, trained on the
    training batches' labels (`online_probe_train_top1` each log, `online_probe_top1` on the val split at
    each monitor epoch). It never touches the encoder's update; off on data without labels."""

    online_probe_lr: float = 0.1
    """The online probe's SGD learning rate (Nesterov momentum 0.9; its features are standardized by a
    BatchNorm without affine parameters, so one value serves every encoder and batch)."""

    def __post_init__(self) -> None:
        for name in ("linear_epochs", "linear_batch_size", "knn_k", "image_size"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.linear_base_lr > 0, "linear_base_lr", f"must be > 0, got {self.linear_base_lr}")
        check(self.knn_temperature > 0, "knn_temperature", f"must be > 0, got {self.knn_temperature}")
        check(self.checkpoint_minutes >= 0, "checkpoint_minutes", f"must be >= 0 (0: off), got {self.checkpoint_minutes}")
        check(self.online_probe_lr > 0, "online_probe_lr", f"must be > 0, got {self.online_probe_lr}")
        check(self.linear_feature_norm in ("none", "batchnorm"), "linear_feature_norm",
              f"choose none or batchnorm, got {self.linear_feature_norm!r}")
        check(len(self.linear_l2_grid) >= 1 and all(v >= 0 for v in self.linear_l2_grid), "linear_l2_grid",
              f"give one or more penalties >= 0, got {list(self.linear_l2_grid)}")
