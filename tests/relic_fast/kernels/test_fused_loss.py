"""The fused Triton RELICv2 loss against the float64 reference, forward and backward.

On CPU the kernels run under the Triton interpreter, which must be switched on (TRITON_INTERPRET=1)
before triton is first imported: `tl.zeros` and the other library functions are built at that
import. So in a plain `pytest` run, `test_interpreter_suite` reruns this file in a subprocess with
TRITON_INTERPRET=1 and the interpreter tests here are skipped in the parent (they run in the
child); with TRITON_INTERPRET=1 set by the caller they run in-process. Shapes are tiny (the
interpreter runs every program in Python) but straddle the 16 x 16 interpreter tiles. The `gpu`
tests rerun the comparison with the compiled kernels at realistic sizes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from relic_fast.kernels import relicv2_fused as fused
from relic_fast.loss import relicv2_core_reference, relicv2_loss_terms

from tests.support import REPO
from tests.support.loss_oracle import oracle_core

WEIGHTS = torch.tensor([1.0, 0.3, -0.7], dtype=torch.float64)  # <w, [total, contr, inv]>: every path

interpreted = pytest.mark.skipif(not fused.interpreting(),
                                 reason="Triton interpreter tests: run by test_interpreter_suite in a "
                                        "TRITON_INTERPRET=1 subprocess")


@pytest.mark.slow
def test_interpreter_suite():
    """Run this file's interpreter tests in a fresh process with TRITON_INTERPRET=1, on CPU."""
    if fused.interpreting():
        pytest.skip("already interpreting: the tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    root = REPO
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu",
                          str(Path(__file__).resolve())], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"interpreter tests failed:\n{out.stdout[-20000:]}\n{out.stderr[-5000:]}"
    assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout[-5000:]


def _embeddings(V, L, B, N, D, *, row_offset=0, seed=0, colinear=False):
    """float64 unit rows: online (V, B, D) = rows row_offset.. of online_all (V, N, D); target (L, N, D)."""
    gen = torch.Generator().manual_seed(seed)
    online_all = F.normalize(torch.randn(V, N, D, generator=gen, dtype=torch.float64), dim=-1)
    target = F.normalize(torch.randn(L, N, D, generator=gen, dtype=torch.float64), dim=-1)
    if colinear:  # every online and target row the same unit vector
        online_all = online_all[:1, :1].expand(V, N, D).clone()
        target = online_all[:1, :1].expand(L, N, D).clone()
    return online_all[:, row_offset:row_offset + B].clone(), target, online_all


def _offsets(N, n, seed=1):
    """n distinct shared negative offsets in 1..N-1, as the loss draws them."""
    return torch.randperm(N - 1, generator=torch.Generator().manual_seed(seed))[:n] + 1 if n else None


def _reference(online, target, online_all, **kw):
    """float64 reference loss (3,) and gradient of <WEIGHTS, loss> w.r.t. online."""
    online = online.detach().double().clone().requires_grad_()
    loss = relicv2_core_reference(online, target.double(), online_all.double(), **kw)
    (grad,) = torch.autograd.grad(loss @ WEIGHTS.to(loss.device), online)
    return loss.detach(), grad


def _assert_close(actual, expected, tol):
    """Relative error within tol (elementwise, with the absolute floor tol * max|expected|)."""
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


SHAPES = {  # V (= L + S), L, B, N, D, row_offset, negatives
    "L2S0-B13-below-one-tile": (2, 2, 13, 13, 32, 0, 0),
    "L4S6-B20-two-tiles": (10, 4, 20, 20, 16, 0, 0),
    "L2S1-negatives": (3, 2, 21, 21, 24, 0, 5),
    "distributed-all": (3, 2, 12, 40, 16, 24, 0),
    "distributed-negatives": (3, 2, 12, 40, 16, 28, 7),
}


@interpreted
@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_backward_match_reference_fp32(name):
    """Launchers, with NaN-poisoned outputs, match the float64 reference to 1e-5 (fp32 inputs)."""
    V, L, B, N, D, row_offset, n = SHAPES[name]
    online, target, online_all = _embeddings(V, L, B, N, D, row_offset=row_offset)
    kw = dict(temperature=0.2, beta=0.8, row_offset=row_offset, negative_offsets=_offsets(N, n))
    ref_loss, ref_grad = _reference(online, target, online_all, **kw)
    terms, lse = torch.full((2, 2, V, L, B), float("nan")).unbind(0)
    args = [x.float() for x in (online, target, online_all)]
    loss, lse = fused.relicv2_fused_forward(*args, **kw, terms=terms, lse=lse)
    grad = fused.relicv2_fused_backward(WEIGHTS.float(), *args, lse, **kw,
                                        grad=torch.full((V, B, D), float("nan")))
    assert torch.isfinite(terms).all() and torch.isfinite(lse).all() and torch.isfinite(grad).all()
    _assert_close(loss, ref_loss, 1e-5)
    _assert_close(grad, ref_grad, 1e-5)


def test_reference_agrees_with_loop_oracle():
    """The reference used as ground truth here agrees with the explicit-loop oracle (distributed form)."""
    online, target, online_all = _embeddings(3, 2, 6, 10, 8, row_offset=4)
    for negatives in (None, _offsets(10, 3)):
        kw = dict(temperature=0.2, beta=0.8, row_offset=4, negative_offsets=negatives)
        _assert_close(relicv2_core_reference(online, target, online_all, **kw),
                      oracle_core(online, target, online_all, **kw), 1e-12)


@interpreted
@pytest.mark.parametrize("online_dtype,target_dtype", [(torch.bfloat16, torch.bfloat16),
                                                       (torch.float16, torch.float32)])
def test_autograd_op_half_inputs_under_autocast(online_dtype, target_dtype):
    """bf16/fp16 (and mixed) inputs under autocast: fp32 loss, gradient in the online dtype, 1e-2."""
    online, target, online_all = _embeddings(6, 4, 20, 20, 32, seed=3)
    kw = dict(temperature=0.2, beta=1.0, row_offset=0, negative_offsets=None)
    ref_loss, ref_grad = _reference(online, target, online_all, **kw)
    x = online.to(online_dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = fused.relicv2_core_fused(x, target.to(target_dtype), online_all.to(online_dtype), **kw)
    (loss @ WEIGHTS.float()).backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == online_dtype
    _assert_close(loss, ref_loss, 1e-2)
    _assert_close(x.grad, ref_grad, 1e-2)


@interpreted
@pytest.mark.parametrize("case", ["temperature-0.05", "colinear"])
def test_no_nan_on_extremes(case):
    """T = 0.05 (logits up to 20) and identical rows (all logits tied) stay finite and exact."""
    colinear = case == "colinear"
    online, target, online_all = _embeddings(3, 2, 18, 18, 16, seed=5, colinear=colinear)
    for negatives in (None, _offsets(18, 4)):
        kw = dict(temperature=0.05, beta=1.0, row_offset=0, negative_offsets=negatives)
        ref_loss, ref_grad = _reference(online, target, online_all, **kw)
        x = online.float().requires_grad_()
        loss = fused.relicv2_core_fused(x, target.float(), online_all.float(), **kw)
        (loss @ WEIGHTS.float()).backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
        _assert_close(loss, ref_loss, 1e-5)
        torch.testing.assert_close(x.grad.double(), ref_grad, rtol=1e-5, atol=1e-5)


@interpreted
def test_dispatcher_fused_matches_reference():
    """`relicv2_loss_terms(implementation="fused")` calls the kernel correctly (raw inputs, negatives)."""
    gen = torch.Generator().manual_seed(7)
    online, target = torch.randn(4, 17, 24, generator=gen), torch.randn(2, 17, 24, generator=gen)
    offsets = _offsets(17, 6)
    results = {}
    for implementation in ("reference", "fused"):
        for negative_offsets in (None, offsets):
            x = online.clone().requires_grad_()
            terms = relicv2_loss_terms(x, target, temperature=0.1, beta=0.5, implementation=implementation,
                                       negative_offsets=negative_offsets)
            terms.total.backward()
            results[implementation, negative_offsets is None] = (torch.stack(terms), x.grad)
    for all_negatives in (True, False):
        (loss_r, grad_r), (loss_f, grad_f) = results["reference", all_negatives], results["fused", all_negatives]
        torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_f, grad_r, rtol=1e-5, atol=1e-5 * grad_r.abs().max().item())


@interpreted
def test_torch_compile_fullgraph_dynamic():
    """A compiled function around the custom op (no graph break, symbolic batch size) gives the
    eager values and gradients at two batch sizes."""
    def step(x, t):
        x_n, t_n = F.normalize(x, dim=-1), F.normalize(t, dim=-1)
        return fused.relicv2_core_fused(x_n, t_n, x_n.detach(), temperature=0.2, beta=1.0, row_offset=0,
                                        negative_offsets=None)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True, dynamic=True)
    for batch in (16, 11):
        online, target, _ = _embeddings(2, 2, batch, batch, 16, seed=batch)
        results = []
        for fn in (step, compiled):
            x = (online.float() * 3).requires_grad_()
            loss = fn(x, target.float())
            (loss @ WEIGHTS.float()).backward()
            results.append((loss.detach(), x.grad))
        torch.testing.assert_close(results[1][0], results[0][0])
        torch.testing.assert_close(results[1][1], results[0][1])


@interpreted
def test_opcheck():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch."""
    online, target, online_all = _embeddings(2, 1, 8, 8, 16, seed=11)
    x = online.float().requires_grad_()
    for negatives in (None, _offsets(8, 3)):
        torch.library.opcheck(torch.ops.relic_fast.relicv2_core_fused_fwd.default,
                              (x, target.float(), online_all.float(), negatives, 0.2, 1.0, 0))


@pytest.mark.skipif(fused.interpreting(), reason="the interpreter accepts CPU tensors")
def test_cpu_without_interpreter_raises_clearly():
    """Compiled (non-interpreted) kernels refuse CPU tensors with a message naming the fix."""
    online, target, online_all = _embeddings(2, 1, 4, 4, 16)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        fused.relicv2_core_fused(online.float(), target.float(), online_all.float(), temperature=0.2,
                                 beta=1.0, row_offset=0, negative_offsets=None)


def test_invalid_inputs_rejected():
    """Wrong shapes, row_offset or dtype raise before any launch, naming the problem."""
    online, target, online_all = (x.float() for x in _embeddings(2, 1, 4, 6, 16))
    kw = dict(temperature=0.2, beta=1.0, negative_offsets=None)
    with pytest.raises(ValueError, match="shape mismatch"):
        fused.relicv2_core_fused(online, target[:, :, :8], online_all, row_offset=0, **kw)
    with pytest.raises(ValueError, match="row_offset"):
        fused.relicv2_core_fused(online, target, online_all, row_offset=3, **kw)
    with pytest.raises(TypeError, match="float64"):
        fused.relicv2_core_fused(online.double(), target, online_all, row_offset=0, **kw)
    wide = [torch.zeros(x.shape[:2] + (1024,)) for x in (online, target, online_all)]
    with pytest.raises(ValueError, match="D <= 512"):
        fused.relicv2_core_fused(*wide, row_offset=0, **kw)


def test_autotune_pruning_fits_shared_memory():
    """fp32 rows of D = 256 keep only the small single-stage tiles; the gather path keeps one per BLOCK_M."""
    from relic_fast.kernels import _triton

    configs = _triton._FWD_CONFIGS
    fp32, bf16 = {"online": torch.empty(0)}, {"online": torch.empty(0, dtype=torch.bfloat16)}
    kept = _triton.prune_configs(configs, fp32, ALL_NEGATIVES=True, BLOCK_D=256)
    assert 0 < len(kept) < len(_triton.prune_configs(configs, bf16, ALL_NEGATIVES=True, BLOCK_D=256))
    assert all(c.num_stages == 1 for c in kept)
    gather = _triton.prune_configs(configs, fp32, ALL_NEGATIVES=False, BLOCK_D=256)
    assert len({(c.kwargs["BLOCK_M"], c.num_warps) for c in gather}) == len(gather)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or fused.interpreting(),
                    reason="needs a CUDA GPU and compiled kernels")
@pytest.mark.parametrize("dtype,tol,grad_scale", [(torch.float32, 1e-5, 1.0), (torch.bfloat16, 1e-2, 1.0),
                                                  (torch.float16, 1e-2, 65536.0)])
@pytest.mark.parametrize("negatives", [0, 100])
def test_cuda_matches_reference(dtype, tol, grad_scale, negatives):
    """Compiled kernels on CUDA (autotuned tiles, IEEE fp32 matmuls), fp16 with a GradScaler-size scale."""
    online, target, online_all = (x.cuda() for x in _embeddings(6, 4, 300, 300, 256, seed=13))
    offsets = _offsets(300, negatives)
    kw = dict(temperature=0.2, beta=1.0, row_offset=0,
              negative_offsets=None if offsets is None else offsets.cuda())
    ref_loss, ref_grad = _reference(online, target, online_all, **kw)
    x = online.to(dtype).requires_grad_()
    loss = fused.relicv2_core_fused(x, target.to(dtype), online_all.to(dtype), **kw)
    (loss @ WEIGHTS.cuda().float() * grad_scale).backward()
    _assert_close(loss, ref_loss.cuda(), tol)
    _assert_close(x.grad / grad_scale, ref_grad.cuda(), tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or fused.interpreting(),
                    reason="needs a CUDA GPU and compiled kernels")
def test_cuda_peak_memory_at_target_size():
    """B = 4096, 6 online x 4 target views, D = 256: forward + backward needs <= 0.5 GiB extra."""
    online, target, online_all = (x.cuda().float() for x in _embeddings(6, 4, 4096, 4096, 256, seed=17))
    x = online.requires_grad_()
    kw = dict(temperature=0.2, beta=1.0, row_offset=0, negative_offsets=None)
    fused.relicv2_core_fused(x, target, online_all, **kw)[0].backward()  # autotune outside the window
    x.grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fused.relicv2_core_fused(x, target, online_all, **kw)[0].backward()
    torch.cuda.synchronize()
    assert (torch.cuda.max_memory_allocated() - before) / 2**30 <= 0.5
