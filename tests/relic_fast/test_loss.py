"""RELICv2 loss: a hand-computed example, invariances, stop-gradients, the loop oracle, dispatch."""

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from relic_fast.loss import (LossTerms, draw_negative_offsets, relicv2_core_reference, relicv2_loss,
                             relicv2_loss_terms)

from tests.support.loss_oracle import oracle_core, oracle_loss


def test_hand_computed_two_samples_two_dims():
    # One online and one target view, B = 2, D = 2, T = 1. After normalization:
    #   online o0 = (1, 0), o1 = (0, 1); target t0 = t1 = (1, 0).
    # z[b, k] = <o_b, t_k>: z0 = (1, 1), z1 = (0, 0) -> p0 = p1 = (1/2, 1/2);
    #   contrastive = mean_b -log p_b[b] = log 2.
    # z'[b, k] = <o_k, t_b>: both rows (1, 0) -> q_b = (s, 1 - s) with s = sigmoid(1) = e / (1 + e);
    #   KL(q || p) = sum q log q - sum q log(1/2) = log 2 - H(s), H(s) = -s log s - (1-s) log(1-s).
    # total = contrastive + beta * invariance, beta = 0.5.
    online = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])  # raw: the loss normalizes
    target = torch.tensor([[[5.0, 0.0], [0.5, 0.0]]])
    s = math.e / (1 + math.e)
    entropy = -s * math.log(s) - (1 - s) * math.log(1 - s)
    expected_invariance = math.log(2) - entropy                      # = 0.110944...
    terms = relicv2_loss_terms(online, target, temperature=1.0, beta=0.5, implementation="reference")
    assert isinstance(terms, LossTerms)
    assert terms.contrastive.item() == pytest.approx(math.log(2), abs=1e-6)
    assert terms.invariance.item() == pytest.approx(expected_invariance, abs=1e-6)
    assert expected_invariance == pytest.approx(0.110944, abs=1e-6)
    assert terms.total.item() == pytest.approx(math.log(2) + 0.5 * expected_invariance, abs=1e-6)
    oracle = oracle_loss(online, target, temperature=1.0, beta=0.5)
    torch.testing.assert_close(oracle.float(), torch.stack(list(terms)))


def _random_views(num_online=3, num_target=2, batch=5, dim=4, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    online = torch.randn(num_online, batch, dim, generator=generator, dtype=dtype)
    target = torch.randn(num_target, batch, dim, generator=generator, dtype=dtype)
    return online.requires_grad_(), target.requires_grad_()


def test_invariant_to_input_scale():
    online, target = _random_views(dtype=torch.float32)
    base = relicv2_loss(online, target, implementation="reference")
    scales = torch.tensor([0.1, 7.0, 3.0]).view(3, 1, 1)  # a different scale per online view
    scaled = relicv2_loss(online * scales, 40.0 * target, implementation="reference")
    torch.testing.assert_close(scaled, base)


def test_no_gradient_reaches_the_target():
    online, target = _random_views()
    loss = relicv2_loss(online, target, implementation="reference", num_negatives=2)
    grad_online, grad_target = torch.autograd.grad(loss, [online, target], allow_unused=True)
    assert grad_target is None
    assert grad_online is not None and grad_online.abs().sum() > 0


@pytest.mark.parametrize("num_online,num_target,batch,dim,temperature,beta,offsets", [
    (1, 1, 2, 3, 0.2, 1.0, None),
    (3, 2, 5, 4, 0.2, 1.0, None),
    (6, 4, 4, 8, 0.5, 0.3, None),
    (3, 2, 6, 4, 0.2, 1.0, [2]),
    (4, 2, 7, 5, 0.1, 2.0, [6, 1, 3]),
])
def test_matches_loop_oracle_forward_and_backward(num_online, num_target, batch, dim, temperature,
                                                   beta, offsets):
    online, target = _random_views(num_online, num_target, batch, dim, seed=batch + dim)
    negative_offsets = None if offsets is None else torch.tensor(offsets)
    terms = relicv2_loss_terms(online, target, temperature=temperature, beta=beta,
                               negative_offsets=negative_offsets, implementation="reference")
    expected = oracle_loss(online, target, temperature=temperature, beta=beta,
                           negative_offsets=negative_offsets)
    torch.testing.assert_close(torch.stack(list(terms)), expected, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad(terms.total, online)
    expected_grad, = torch.autograd.grad(expected[0], online)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("offsets", [None, [1, 4], [5, 2, 7]])
def test_distributed_form_matches_oracle(offsets):
    # A rank holding rows 3..5 of a global batch of N = 9: row_offset = 3, all-gathered tensors.
    generator = torch.Generator().manual_seed(3)
    online_all = F.normalize(torch.randn(3, 9, 4, generator=generator, dtype=torch.float64), dim=-1)
    target_all = F.normalize(torch.randn(2, 9, 4, generator=generator, dtype=torch.float64), dim=-1)
    online_local = online_all[:, 3:6].clone().requires_grad_()
    negative_offsets = None if offsets is None else torch.tensor(offsets)
    kwargs = dict(temperature=0.3, beta=0.7, row_offset=3, negative_offsets=negative_offsets)
    result = relicv2_core_reference(online_local, target_all, online_all, **kwargs)
    expected = oracle_core(online_local, target_all, online_all, **kwargs)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad(result[0], online_local)
    expected_grad, = torch.autograd.grad(expected[0], online_local)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_num_negatives_draws_shared_offsets_and_all_means_every_column():
    online, target = _random_views(batch=8)
    torch.manual_seed(5)
    drawn = torch.randperm(7)[:3] + 1
    torch.manual_seed(5)
    sampled = relicv2_loss(online, target, num_negatives=3, implementation="reference")
    expected = oracle_loss(online, target, negative_offsets=drawn)[0]
    torch.testing.assert_close(sampled, expected, rtol=1e-12, atol=1e-12)
    every = relicv2_loss(online, target, implementation="reference")
    for n in (7, 100):  # n >= N - 1 is every other sample: the all-negatives loss
        torch.testing.assert_close(relicv2_loss(online, target, num_negatives=n), every)


def test_draw_negative_offsets_are_distinct_and_in_range():
    offsets = draw_negative_offsets(10, 6)
    assert offsets.dtype == torch.int64 and len(set(offsets.tolist())) == 6
    assert offsets.min() >= 1 and offsets.max() <= 9
    with pytest.raises(ValueError):
        draw_negative_offsets(10, 10)


def test_autocast_computes_in_float32():
    online, target = _random_views(dtype=torch.float32)
    expected = relicv2_loss(online, target, implementation="reference")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = relicv2_loss(online, target, implementation="reference")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected)
    half = relicv2_loss(online.bfloat16(), target.bfloat16(), implementation="reference")
    assert half.dtype == torch.float32


def test_dispatch(monkeypatch):
    online, target = _random_views()
    calls = []

    def fake_fused(*args, **kwargs):
        calls.append(kwargs)
        return relicv2_core_reference(*args, **kwargs)

    module = types.ModuleType("relic_fast.kernels.relicv2_fused")
    module.relicv2_core_fused = fake_fused
    monkeypatch.setitem(sys.modules, "relic_fast.kernels.relicv2_fused", module)
    relicv2_loss(online, target, implementation="auto")  # CPU tensors: the reference
    assert not calls
    relicv2_loss(online, target, implementation="fused")
    assert len(calls) == 1 and calls[0]["row_offset"] == 0
    monkeypatch.setitem(sys.modules, "relic_fast.kernels.relicv2_fused", None)  # import fails
    with pytest.raises(RuntimeError, match="fused"):
        relicv2_loss(online, target, implementation="fused")
    with pytest.raises(ValueError, match="implementation"):
        relicv2_loss(online, target, implementation="triton")


def test_shape_validation():
    with pytest.raises(ValueError, match="online"):
        relicv2_loss(torch.randn(2, 4, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="large views first"):
        relicv2_loss(torch.randn(1, 4, 3), torch.randn(2, 4, 3))


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: its half of the batch, gather_targets=True; saves terms and the online grad."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        online, target = _random_views(num_online=3, num_target=2, batch=6, dim=4, seed=11)
        batch = online.shape[1] // world
        local_online = online[:, rank * batch:(rank + 1) * batch].detach().requires_grad_()
        local_target = target[:, rank * batch:(rank + 1) * batch].detach()
        results = {}
        for name, offsets in (("all", None), ("sampled", torch.tensor([4, 1]))):
            terms = relicv2_loss_terms(local_online, local_target, temperature=0.3, beta=0.8,
                                       implementation="reference", gather_targets=True,
                                       negative_offsets=offsets)
            grad, = torch.autograd.grad(terms.total, local_online)
            results[name] = (torch.stack(list(terms)).detach(), grad)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_gather_equals_single_process_loss(tmp_path):
    import torch.multiprocessing as mp
    world = 2
    mp.spawn(_gather_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    online, target = _random_views(num_online=3, num_target=2, batch=6, dim=4, seed=11)
    for name, offsets in (("all", None), ("sampled", torch.tensor([4, 1]))):
        full = relicv2_loss_terms(online, target, temperature=0.3, beta=0.8, implementation="reference",
                                  negative_offsets=offsets)
        full_grad, = torch.autograd.grad(full.total, online)
        # Every rank averages over its own rows: the mean over ranks is the global loss, and DDP's
        # gradient averaging (a 1/world factor on each rank's local gradient) gives the global gradient.
        mean_terms = torch.stack([ranks[r][name][0] for r in range(world)]).mean(dim=0)
        torch.testing.assert_close(mean_terms, torch.stack(list(full)).detach(), rtol=1e-12, atol=1e-12)
        local_grads = torch.cat([ranks[r][name][1] for r in range(world)], dim=1) / world
        torch.testing.assert_close(local_grads, full_grad, rtol=1e-10, atol=1e-12)
