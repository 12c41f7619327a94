"""Networks of RELICv2: width-multiplied ResNet encoders, projector/predictor MLPs, online and target.

- `build_encoder(name, width, small_stem)`: torchvision's ResNet blocks with every stage AND the
  stem widened by `width` (SimCLR's ResNet50 2x/4x, not torchvision's `wide_resnet50_2`), the fc
  removed: it returns pooled features (B, 512 * expansion * width). With `zero_init_residual` (the
  pretraining default, `model.zero_init_residual`) the last BatchNorm of every residual block starts at
  gamma = 0 (BYOL's and Goyal et al.'s init), so each block starts as identity; without it, torchvision's
  default init (the random-init baseline). Its strided convolutions are `StridedConv2d`: stride 1 along a
  map of size 1 (the same result), which keeps tiny views clear of a oneDNN bf16 bug on the CPU.
- `OnlineNetwork` (encoder -> projector -> predictor) returns (projection, prediction); the
  `TargetNetwork` (encoder -> projector) is an EMA copy that never takes a gradient.
- `relic_fast.step.MultiViewOnline` runs the online network once per resolution (all large views
  batched, then all small views); the step runs the target once over the large views. No loss is
  computed in any `forward`.
- `ema_update` moves the target with multi-tensor ops; BatchNorm buffers are copied from online.
- Activation checkpointing (`model.activation_checkpointing`): each residual stage keeps only its
  input for backward and recomputes the rest there (`checkpoint_stage`), with BatchNorm running
  statistics updated by the forward only, never again by the recomputation.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from relic_fast.config import ModelConfig

ENCODER_LAYERS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
    "resnet200": (Bottleneck, [3, 24, 36, 3]),
}
"""Block type and blocks per stage of each encoder depth."""


class StridedConv2d(nn.Conv2d):
    """A strided, "same"-padded convolution that runs at stride 1 along an input dimension of size 1.

    On a map of size 1 the output has size 1 at any stride (the padding is (k - 1) / 2), so the result is
    the same. Why: oneDNN's CPU bf16 backward of a strided, padded convolution on a 1x1 map reads memory it
    never wrote into the padding taps of the weight gradient (NaN or 1e23 at random; torch 2.14.1), and small
    views (16 px) bring ResNet's last stage to a 1x1 map. At stride 1 that kernel is exact; on a GPU both run
    the same arithmetic.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`conv2d` of `x`, at stride 1 along each spatial dimension of size 1."""
        stride = tuple(1 if size == 1 else step for size, step in zip(x.shape[-2:], self.stride))
        return F.conv2d(x, self.weight, self.bias, stride, self.padding, self.dilation, self.groups)


def use_strided_conv(module: nn.Module) -> None:
    """Make every strided, "same"-padded `nn.Conv2d` under `module` a `StridedConv2d`, in place.

    The class changes and nothing else: same parameters, same state-dict keys, no random draw."""
    for conv in module.modules():
        if (type(conv) is nn.Conv2d and conv.stride != (1, 1) and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple)
                and all(2 * pad == dilation * (kernel - 1)
                        for pad, dilation, kernel in zip(conv.padding, conv.dilation, conv.kernel_size))):
            conv.__class__ = StridedConv2d


class ResNetEncoder(ResNet):
    """A torchvision ResNet with stem and stages widened by `width` and no classifier.

    Built through torchvision's own `_make_layer` with planes 64w, 128w, 256w, 512w (every block's
    inner and outer channels scale, as in SimCLR's wide ResNets). `forward` (inherited) returns the
    average-pooled, flattened features of size `feature_dim`.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], width: int = 1,
                 small_stem: bool = False, zero_init_residual: bool = True) -> None:
        nn.Module.__init__(self)  # ResNet.__init__ would first build the 1x network
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = 64 * width
        self.dilation, self.groups, self.base_width = 1, 1, 64
        if small_stem:  # images under 64 px: keep resolution, as in CIFAR ResNets
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64 * width, layers[0])
        self.layer2 = self._make_layer(block, 128 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Identity()
        self.feature_dim = 512 * block.expansion * width
        self.activation_checkpointing = False
        """Recompute each residual stage in backward instead of storing its activations (when training
        with grad enabled; `model.activation_checkpointing`)."""
        use_strided_conv(self)
        self._init_weights(zero_init_residual)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features; with activation checkpointing, each of the four stages is a checkpoint."""
        if not (self.activation_checkpointing and self.training and torch.is_grad_enabled()):
            return super()._forward_impl(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint_stage(stage, x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's init (Kaiming fan-out convs, BN 1/0), optionally zeroing each block's last BN gamma."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)


@contextmanager
def running_statistics_frozen(module: nn.Module) -> Iterator[None]:
    """Every BatchNorm in `module` updates scratch copies of its running statistics (and of
    `num_batches_tracked`), which are dropped afterwards: what a recomputation must do, or each step
    counts twice. The layers still normalize with batch statistics and save the same tensors."""
    norms = [m for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    names = ("running_mean", "running_var", "num_batches_tracked")
    kept = [{name: getattr(norm, name) for name in names} for norm in norms]
    for norm, buffers in zip(norms, kept):
        for name, buffer in buffers.items():
            setattr(norm, name, buffer.clone())
    try:
        yield
    finally:
        for norm, buffers in zip(norms, kept):
            for name, buffer in buffers.items():
                setattr(norm, name, buffer)


def checkpoint_stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`stage(x)` keeping only `x` for backward (non-reentrant `torch.utils.checkpoint`).

    Eager: the recomputation runs under `running_statistics_frozen`, so BatchNorm running statistics
    move once per forward, as without checkpointing. Compiled: AOTAutograd recomputes only the
    region's functional ops in the backward graph; the running-statistics updates stay in the forward
    graph, once, so the plain checkpoint is already right there.
    """
    if torch.compiler.is_compiling():
        return checkpoint(stage, x, use_reentrant=False)
    return checkpoint(stage, x, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), running_statistics_frozen(stage)))


def build_encoder(name: str, width: int = 1, small_stem: bool = False,
                  zero_init_residual: bool = True) -> ResNetEncoder:
    """ResNet `name` (resnet18 ... resnet200) at width 1, 2 or 4; pooled features of size `feature_dim`."""
    if name not in ENCODER_LAYERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODER_LAYERS)}")
    if width not in (1, 2, 4):
        raise ValueError(f"encoder width must be 1, 2 or 4, got {width}")
    block, layers = ENCODER_LAYERS[name]
    return ResNetEncoder(block, layers, width=width, small_stem=small_stem,
                         zero_init_residual=zero_init_residual)


class MLP(nn.Sequential):
    """Projector/predictor head: Linear -> BatchNorm1d -> ReLU -> Linear(bias=False) (BYOL's)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim, bias=False))


class Embeddings(NamedTuple):
    """What the online network gives for a batch of images: (N, D) projections and predictions, and the
    encoder's (N, F) pooled features (what the online probe reads, detached)."""

    projection: torch.Tensor
    prediction: torch.Tensor
    features: torch.Tensor


class OnlineNetwork(nn.Module):
    """Encoder -> projector -> predictor; the network the optimizer trains."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector, self.predictor = encoder, projector, predictor

    def forward(self, x: torch.Tensor) -> Embeddings:
        """Images (N, 3, H, W) -> (projection, prediction) of size embedding_dim, and the pooled features."""
        features = self.encoder(x)
        projection = self.projector(features)
        return Embeddings(projection, self.predictor(projection), features)


class TargetNetwork(nn.Module):
    """Encoder -> projector, an EMA copy of the online ones; its parameters never require grad."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = encoder, projector
        self.requires_grad_(False)

    @classmethod
    def from_online(cls, online: OnlineNetwork) -> "TargetNetwork":
        """A target initialized as an exact copy of the online encoder and projector."""
        return cls(copy.deepcopy(online.encoder), copy.deepcopy(online.projector))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> projections (N, embedding_dim), without recording autograd."""
        with torch.no_grad():
            return self.projector(self.encoder(x))


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def build_networks(model: ModelConfig, device: torch.device | str | None = None
                   ) -> tuple[OnlineNetwork, TargetNetwork]:
    """Online and target networks for `model`, in channels-last memory format (on `device` if given)."""
    encoder = build_encoder(model.encoder, model.width, model.small_stem, model.zero_init_residual)
    encoder.activation_checkpointing = model.activation_checkpointing
    projector = MLP(encoder.feature_dim, model.projector_hidden, model.embedding_dim)
    predictor = MLP(model.embedding_dim, model.predictor_hidden, model.embedding_dim)
    online = OnlineNetwork(encoder, projector, predictor).to(device=device, memory_format=torch.channels_last)
    target = TargetNetwork.from_online(online)
    return online, target


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """The module with every BatchNorm replaced by SyncBatchNorm (call before wrapping in DDP)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _target_pairs(target: nn.Module, online: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (target, online) parameter lists: online's encoder + projector, in module order."""
    target_params = list(target.parameters())
    online_params = list(online.encoder.parameters()) + list(online.projector.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks do not have matching encoder/projector parameters")
    return target_params, online_params


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target = tau * target + (1 - tau) * online for every parameter; buffers copied from online.

    Multi-tensor (`torch._foreach_mul_` / `_foreach_add_`), no Python loop over parameters. BatchNorm
    running statistics are copied: the target trains with batch statistics, so its running
    statistics only serve evaluation, where the online ones are the best estimate.
    """
    target, online = unwrap(target), unwrap(online)
    target_params, online_params = _target_pairs(target, online)
    torch._foreach_mul_(target_params, tau)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - tau)
    target_buffers = list(target.buffers())
    online_buffers = list(online.encoder.buffers()) + list(online.projector.buffers())
    if target_buffers:
        torch._foreach_copy_(target_buffers, online_buffers)
