"""LARS: a hand-computed two-step example, a per-parameter reference, the excluded parameters."""

import copy

import pytest
import torch
from torch import nn

from relic_fast.config import OptimConfig
from relic_fast.optim import LARS, build_lars, lars_param_groups


def reference_lars_step(params, grads, buffers, *, lr, momentum, weight_decay, eta):
    """Per-parameter Python LARS (BYOL's math), the oracle of the multi-tensor step."""
    for p, g, buf in zip(params, grads, buffers):
        if p.ndim >= 2:
            update = g + weight_decay * p
            p_norm, u_norm = p.norm(), update.norm()
            trust = eta * p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
            update = trust * update
        else:
            update = g
        buf.mul_(momentum).add_(update)
        p.sub_(lr * buf)


def test_hand_computed_two_steps():
    # p = diag(3, 4): ||p|| = 5; g = diag(0.3, 0.4); wd = 0.1 -> update = g + 0.1 p = diag(0.6, 0.8),
    # ||update|| = 1; trust = eta * 5 / 1 = 0.05 with eta = 0.01; buf = 0.05 * update = diag(.03, .04);
    # p1 = p - lr * buf = diag(3 - 0.06, 4 - 0.08) = diag(2.94, 3.92) with lr = 2.
    p = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    opt = LARS([p], lr=2.0, momentum=0.9, weight_decay=0.1, trust_coefficient=0.01)
    p.grad = torch.tensor([[0.3, 0.0], [0.0, 0.4]], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([[2.94, 0.0], [0.0, 3.92]], dtype=torch.float64))
    # Step 2, same g: update = diag(0.3 + 0.294, 0.4 + 0.392) = 0.99 * diag(0.6, 0.8), norm 0.99;
    # ||p1|| = 4.9; trust = 0.01 * 4.9 / 0.99; trust * update = diag(0.0294, 0.0392);
    # buf = 0.9 * diag(.03, .04) + that = diag(0.0564, 0.0752); p2 = p1 - 2 * buf = diag(2.8272, 3.7696).
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([[2.8272, 0.0], [0.0, 3.7696]], dtype=torch.float64))


def test_zero_norm_parameter_uses_unit_trust():
    p = nn.Parameter(torch.zeros(2, 3))
    p.grad = torch.full((2, 3), 0.5)
    LARS([p], lr=0.1, momentum=0.9, weight_decay=0.1, trust_coefficient=1e-3).step()
    torch.testing.assert_close(p.detach(), torch.full((2, 3), -0.05))  # trust 1: p -= lr * g


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5),
                         nn.BatchNorm1d(5), nn.Linear(5, 2, bias=False))


def test_multi_tensor_step_matches_per_parameter_reference_and_sgd_for_excluded():
    model = _tiny_model()
    reference = copy.deepcopy(model)
    sgd_model = copy.deepcopy(model)
    cfg = OptimConfig(weight_decay=0.05, momentum=0.9, trust_coefficient=0.02, implementation="reference")
    opt = build_lars(model, cfg, lr=0.5)
    assert isinstance(opt, LARS)
    excluded_sgd = [p for p in sgd_model.parameters() if p.ndim < 2]
    sgd = torch.optim.SGD(excluded_sgd, lr=0.5, momentum=0.9)
    ref_params = list(reference.parameters())
    ref_buffers = [torch.zeros_like(p) for p in ref_params]
    generator = torch.Generator().manual_seed(1)
    for step, lr in enumerate([0.5, 0.3, 0.1]):  # a changing lr, as under the schedule
        grads = [torch.randn(p.shape, generator=generator) for p in ref_params]
        for group in opt.param_groups:
            group["lr"] = lr
        sgd.param_groups[0]["lr"] = lr
        for p, p_sgd, g in zip(model.parameters(), sgd_model.parameters(), grads):
            p.grad, p_sgd.grad = g.clone(), g.clone()
        opt.step()
        sgd.step()
        with torch.no_grad():
            reference_lars_step(ref_params, grads, ref_buffers, lr=lr, momentum=0.9,
                                weight_decay=0.05, eta=0.02)
        for p, p_ref, p_sgd, g in zip(model.parameters(), ref_params, sgd_model.parameters(), grads):
            torch.testing.assert_close(p, p_ref, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(p.grad, g)  # the step never rescales .grad in place
            if p.ndim < 2:  # biases and norm parameters: plain momentum SGD, no decay, no trust
                torch.testing.assert_close(p, p_sgd, rtol=1e-6, atol=1e-7)


def test_param_groups_split_by_ndim():
    model = _tiny_model()
    adapted, excluded = lars_param_groups(model, weight_decay=1e-6)
    assert all(p.ndim >= 2 for p in adapted["params"]) and len(adapted["params"]) == 3
    assert all(p.ndim < 2 for p in excluded["params"]) and len(excluded["params"]) == 6
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]
    assert adapted["weight_decay"] == 1e-6 and not adapted["lars_exclude"]


def test_apex_requested_but_missing_is_a_clear_error_and_auto_falls_back():
    model = _tiny_model()
    try:
        from apex.optimizers import FusedLARS  # noqa: F401
        pytest.skip("apex FusedLARS is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="apex"):
        build_lars(model, OptimConfig(implementation="apex"), lr=0.1)
    assert isinstance(build_lars(model, OptimConfig(implementation="auto"), lr=0.1), LARS)
