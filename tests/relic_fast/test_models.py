"""Encoders, heads, online/target networks, EMA, SyncBatchNorm conversion, and one full CPU step."""

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from relic_fast.config import ModelConfig, OptimConfig
from relic_fast.loss import relicv2_loss
from relic_fast.models import (ENCODER_LAYERS, MLP, OnlineNetwork, TargetNetwork, build_encoder,
                               build_networks, convert_sync_batchnorm, ema_update)
from relic_fast.optim import build_lars

EXPANSION = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "resnet101": 4, "resnet152": 4, "resnet200": 4}


# Published encoder sizes without the fc, in millions: SimCLR's ResNet50 1x/2x/4x (24M, 94M, 375M)
# and BYOL's ResNet200 2x (250M).
PUBLISHED_MILLIONS = {("resnet50", 1): 23.5, ("resnet50", 2): 93.9, ("resnet50", 4): 375.4,
                      ("resnet200", 2): 250.1}


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("name", list(ENCODER_LAYERS))
def test_feature_dim_on_meta_device(name, width):
    with torch.device("meta"):  # shapes only: ResNet200 4x would need ~4 GB of weights
        encoder = build_encoder(name, width)
        if width == 4:  # a meta forward costs ~1 s of dispatch for the deep ones: once per depth
            assert encoder.eval()(torch.empty(2, 3, 64, 64)).shape == (2, encoder.feature_dim)
    assert encoder.feature_dim == 512 * EXPANSION[name] * width
    last_block = encoder.layer4[-1]
    last_conv = last_block.conv3 if isinstance(last_block, Bottleneck) else last_block.conv2
    assert last_conv.out_channels == encoder.feature_dim
    assert isinstance(encoder.fc, nn.Identity)
    assert encoder.conv1.out_channels == 64 * width  # the stem is widened too
    if (name, width) in PUBLISHED_MILLIONS:
        millions = sum(p.numel() for p in encoder.parameters()) / 1e6
        assert millions == pytest.approx(PUBLISHED_MILLIONS[name, width], abs=0.1)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return build_encoder("resnet50", 1)


def test_small_forward_passes_and_stems(resnet50):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 1)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert resnet50(torch.randn(2, 3, 32, 32)).shape == (2, 2048)
    small = build_encoder("resnet18", 1, small_stem=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    stem = small.maxpool(small.relu(small.bn1(small.conv1(torch.randn(2, 3, 16, 16)))))
    assert stem.shape[-2:] == (16, 16)  # no downsampling in the small stem
    assert small(torch.randn(2, 3, 16, 16)).shape == (2, 512)


def test_last_bn_of_each_block_starts_at_zero(resnet50):
    for name, encoder in (("resnet18", build_encoder("resnet18")), ("resnet50", resnet50)):
        blocks = [m for m in encoder.modules() if isinstance(m, (BasicBlock, Bottleneck))]
        assert len(blocks) == sum(ENCODER_LAYERS[name][1])
        for block in blocks:
            last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
            assert torch.count_nonzero(last_bn.weight) == 0
            assert torch.all(block.bn1.weight == 1)


def test_unknown_encoder_or_width_is_rejected():
    with pytest.raises(ValueError, match="resnet200"):
        build_encoder("resnet99")
    with pytest.raises(ValueError, match="width"):
        build_encoder("resnet18", 3)


def tiny_model_config(**changes) -> ModelConfig:
    values = dict(encoder="resnet18", width=1, projector_hidden=32, embedding_dim=8, predictor_hidden=16)
    values.update(changes)
    return ModelConfig(**values)


def test_build_networks_heads_channels_last_and_frozen_target():
    online, target = build_networks(tiny_model_config())
    assert isinstance(online, OnlineNetwork) and isinstance(target, TargetNetwork)
    assert isinstance(online.projector, MLP) and isinstance(online.predictor, MLP)
    layers = list(online.projector)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[3].out_features) == (512, 32, 8)
    assert layers[3].bias is None
    assert (online.predictor[0].in_features, online.predictor[0].out_features) == (8, 16)
    assert online.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert target.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in online.parameters())
    online_params = list(online.encoder.parameters()) + list(online.projector.parameters())
    for p_target, p_online in zip(target.parameters(), online_params, strict=True):
        assert torch.equal(p_target, p_online) and p_target.data_ptr() != p_online.data_ptr()


def _tiny_networks() -> tuple[OnlineNetwork, TargetNetwork]:
    """An online/target pair around a one-conv encoder (EMA mechanics do not depend on depth)."""
    encoder = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten())
    online = OnlineNetwork(encoder, MLP(6, 12, 4), MLP(4, 8, 4))
    return online, TargetNetwork.from_online(online)


def test_ema_update_follows_the_formula_and_copies_buffers():
    torch.manual_seed(0)
    online, target = _tiny_networks()
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()
    online(torch.randn(4, 3, 8, 8))  # moves the online BatchNorm running statistics
    before = [p.clone() for p in target.parameters()]
    online_params = list(online.encoder.parameters()) + list(online.projector.parameters())
    tau = 0.9
    ema_update(target, online, tau)
    for new, old, p_online in zip(target.parameters(), before, online_params, strict=True):
        assert not torch.equal(new, old)
        torch.testing.assert_close(new, tau * old + (1 - tau) * p_online, rtol=1e-6, atol=1e-7)
    online_buffers = list(online.encoder.buffers()) + list(online.projector.buffers())
    for b_target, b_online in zip(target.buffers(), online_buffers, strict=True):
        assert torch.equal(b_target, b_online)
    assert all(not p.requires_grad for p in target.parameters())


def test_convert_sync_batchnorm_replaces_every_batchnorm():
    online, _ = build_networks(tiny_model_config())
    count = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in online.modules())
    converted = convert_sync_batchnorm(online)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == count


def test_one_training_step_on_cpu_resnet18_four_large_two_small_views():
    torch.manual_seed(0)
    num_large, num_small, batch = 4, 2, 4
    online, target = build_networks(tiny_model_config())
    online.train(), target.train()
    optimizer = build_lars(online, OptimConfig(implementation="reference"), lr=0.5)
    large = torch.randn(num_large * batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    small = torch.randn(num_small * batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    online_before = [p.clone() for p in online.parameters()]
    target_before = [p.clone() for p in target.parameters()]

    from relic_fast.step import MultiViewOnline  # the trainer's one-call-per-resolution online forward

    predictions, features = MultiViewOnline(online)(large, small)
    predictions = predictions.unflatten(0, (num_large + num_small, -1))
    assert features.shape == (num_large * batch, 512) and not features.requires_grad  # the online probe's input
    projections = target(large).unflatten(0, (num_large, -1))
    assert predictions.shape == (num_large + num_small, batch, 8)
    assert projections.shape == (num_large, batch, 8) and not projections.requires_grad
    loss = relicv2_loss(predictions, projections, implementation="reference")
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in target.parameters())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for p, old in zip(target.parameters(), target_before):
        assert torch.equal(p, old)  # the optimizer never touches the target
    ema_update(target, online, tau=0.99)

    changed = sum(not torch.equal(p, old) for p, old in zip(online.parameters(), online_before))
    assert changed > len(online_before) // 2
    online_params = list(online.encoder.parameters()) + list(online.projector.parameters())
    for p, old, p_online in zip(target.parameters(), target_before, online_params):
        torch.testing.assert_close(p, 0.99 * old + 0.01 * p_online, rtol=1e-6, atol=1e-7)


def _encoder_weight_grads(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Weight gradients of one bf16-autocast forward/backward of `encoder` on `images` (CPU)."""
    encoder.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = encoder(images)
    features.float().square().sum().backward()
    return [p.grad.clone() for p in encoder.parameters() if p.ndim >= 2]


def test_bf16_backward_on_one_pixel_maps_is_finite_and_repeatable():
    """16 px views take layer4's strided convs down to a 1x1 map. oneDNN's CPU bf16 backward of a strided,
    padded conv on a 1x1 map returns uninitialised memory in the padding taps (NaN or 1e23 at random, 30-90 %
    of calls on torch 2.14.1): the run of the issue's command that stopped with a non-finite loss. The
    encoder must give finite gradients, the same ones on every call."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 1, zero_init_residual=False).to(memory_format=torch.channels_last)
    images = torch.randn(32, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    first = _encoder_weight_grads(encoder, images)
    for round in range(12):
        # leave freed memory full of NaN, so that a kernel that reads memory it never wrote shows it
        for numel in (1 << 12, 1 << 16, 1 << 20):
            del_after = torch.full((numel * (round + 1),), float("nan"), dtype=torch.bfloat16)
            del del_after
        again = _encoder_weight_grads(encoder, images)
        assert all(torch.isfinite(g).all() for g in again)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("size", [1, 2, 5])
def test_strided_convs_are_exact_on_any_map_size(size):
    """The encoder's strided convolutions give torch's own conv2d result at every input size (1 px included)."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 1).double()
    strided = [m for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)]
    assert len(strided) == 7  # the stem, and each of stages 2-4: the first block's conv and its downsample
    for conv in strided:
        x = torch.randn(2, conv.in_channels, size, size, dtype=torch.float64)
        expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
        assert torch.allclose(conv(x), expected, rtol=0, atol=1e-12)
