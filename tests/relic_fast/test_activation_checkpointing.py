"""Activation checkpointing (`model.activation_checkpointing`): the same gradients and BatchNorm running
statistics as a run without it (CPU, fp32), each stage really recomputed, and the training step unchanged."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from relic_fast import models
from relic_fast.config import LossConfig, ModelConfig, ViewsConfig
from relic_fast.models import build_networks
from relic_fast.step import MultiViewOnline, forward_loss
from relic_fast.synthetic import synthetic_inputs

TINY_MODEL = dict(encoder="resnet18", small_stem=True, projector_hidden=32, embedding_dim=16, predictor_hidden=32,
                  sync_batchnorm=False)
VIEWS = ViewsConfig(num_large=2, num_small=1, large_size=16, small_size=8)


def one_backward(activation_checkpointing: bool, steps: int = 2):
    """Gradients, BatchNorm buffers and stage-call counts after `steps` forward + backward passes of the loss."""
    torch.manual_seed(0)
    online, target = build_networks(ModelConfig(**TINY_MODEL, activation_checkpointing=activation_checkpointing))
    calls = {"layer1": 0}
    online.encoder.layer1.register_forward_pre_hook(lambda *_: calls.__setitem__("layer1", calls["layer1"] + 1))
    wrapped = MultiViewOnline(online)
    for step in range(steps):
        inputs = synthetic_inputs(VIEWS, batch_size=4, device="cpu", channels_last=True, seed=step)
        online.zero_grad(set_to_none=True)
        terms, _ = forward_loss(wrapped, target, inputs.large, inputs.small, inputs.num_large, inputs.num_small,
                                LossConfig(implementation="reference"))
        terms[0].backward()
    grads = {name: p.grad.clone() for name, p in online.named_parameters()}
    buffers = {name: b.clone() for name, b in online.named_buffers()}
    return terms.detach(), grads, buffers, calls["layer1"]


def assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{what} {name}: {m}")


def test_gradients_and_running_statistics_equal_a_run_without_it(one_thread):
    plain_terms, plain_grads, plain_buffers, plain_calls = one_backward(False)
    terms, grads, buffers, calls = one_backward(True)
    assert calls == 2 * plain_calls  # each stage ran again in backward: checkpointing is on
    torch.testing.assert_close(terms, plain_terms, rtol=1e-6, atol=1e-6)
    assert_same(grads, plain_grads, "gradient")
    assert_same(buffers, plain_buffers, "BatchNorm buffer")
    tracked = [b for name, b in buffers.items() if name.endswith("num_batches_tracked")]
    assert tracked and all(int(b) == 4 for b in tracked)  # 2 steps x 2 online calls (large, small views)


def test_a_plain_checkpoint_would_update_batchnorm_statistics_twice(monkeypatch, one_thread):
    """The check above can fail: without the frozen recomputation every stage's BatchNorm counts each batch twice."""
    _, plain_grads, plain_buffers, _ = one_backward(False)
    monkeypatch.setattr(models, "checkpoint_stage", lambda stage, x: checkpoint(stage, x, use_reentrant=False))
    _, grads, buffers, _ = one_backward(True)
    assert_same(grads, plain_grads, "gradient")  # the gradients are right even so ...
    with pytest.raises(AssertionError, match="BatchNorm buffer"):
        assert_same(buffers, plain_buffers, "BatchNorm buffer")  # ... the statistics are not
    assert int(buffers["encoder.layer1.0.bn1.num_batches_tracked"]) == 8
    assert int(buffers["encoder.bn1.num_batches_tracked"]) == 4  # the stem is not checkpointed


def test_target_and_eval_forwards_do_not_checkpoint(one_thread):
    online, target = build_networks(ModelConfig(**TINY_MODEL, activation_checkpointing=True))
    assert online.encoder.activation_checkpointing and target.encoder.activation_checkpointing
    calls = []
    for encoder in (online.encoder, target.encoder):
        encoder.layer1.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(4, 3, 16, 16)
    target(x)  # no grad
    online.encoder.eval()(x).sum().backward()  # eval: plain forward
    assert len(calls) == 2


def test_training_step_with_activation_checkpointing_matches_without(one_thread):
    """The whole step the trainer runs (`train_step`: loss, backward, LARS, EMA) from the config key on."""
    from relic_fast.config import OptimConfig
    from relic_fast.step import train_step
    from relic_fast.synthetic import standalone_context

    results = []
    for flag in (False, True):
        model = ModelConfig(**TINY_MODEL, activation_checkpointing=flag)
        context = standalone_context(model, LossConfig(implementation="reference"), OptimConfig(), device="cpu",
                                     precision="fp32", channels_last=True, compiled=False)
        inputs = synthetic_inputs(VIEWS, batch_size=4, device="cpu", channels_last=True)
        terms = train_step(context, inputs, lr=0.1, tau=0.99, global_batch=4)
        results.append((terms, {**{f"online.{k}": v for k, v in context.online_module.state_dict().items()},
                                **{f"target.{k}": v for k, v in context.target.state_dict().items()}}))
    (plain_terms, plain_state), (terms, state) = results
    torch.testing.assert_close(terms, plain_terms, rtol=1e-6, atol=1e-6)
    assert_same(state, plain_state, "after one step:")
