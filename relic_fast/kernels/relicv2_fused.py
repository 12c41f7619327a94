"""Fused multi-view RELICv2 loss: launchers and the `torch.library` custom op around the kernels.

Three layers, as in Liger-Kernel: the `@triton.jit` kernels (`_triton.py`) -> the launchers
`relicv2_fused_forward` / `relicv2_fused_backward` (validation, dtypes, grid, block sizes) -> the
custom ops `relic_fast::relicv2_core_fused_fwd` / `_bwd` with `register_fake` and
`register_autograd` (the autograd layer: torch.compile traces it without graph breaks).
`relicv2_core_fused` is the public entry, with exactly the signature and result of
`relic_fast.loss.relicv2_core_reference` (the oracle of the tests and the benchmark).

No B x N logit matrix is ever materialized: the forward keeps per (view pair, row) only the
contrastive and KL values and the two log-sum-exps (16 bytes), the backward recomputes the logits.
Inputs may be fp32, bf16 or fp16 (mixed dtypes are promoted); accumulation is fp32, the loss is
fp32 and the gradient has the dtype of `online_n`. fp32 matmuls follow
`torch.get_float32_matmul_precision()` ("highest": IEEE fp32, else TF32), like torch's own.

CPU tensors run only under the Triton interpreter: set TRITON_INTERPRET=1 before triton is first
imported in the process (slow; for tests). Without it a CPU call raises a RuntimeError saying so.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton

from relic_fast.kernels import _triton as kernels

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """Whether the kernels run under the Triton interpreter (TRITON_INTERPRET=1 when they were built)."""
    return kernels.INTERPRET


def _check_inputs(online_n: torch.Tensor, target_n: torch.Tensor, online_all_n: torch.Tensor,
                  row_offset: int, negative_offsets: Optional[torch.Tensor]) -> tuple[int, int, int, int, int]:
    """Validate shapes, devices and dtypes (metadata only: no host sync); return V, B, D, L, N."""
    if online_n.dim() != 3 or target_n.dim() != 3 or online_all_n.dim() != 3:
        raise ValueError("relicv2_core_fused expects online_n (V, B, D), target_n (L, N, D) and "
                         f"online_all_n (V, N, D); got {tuple(online_n.shape)}, "
                         f"{tuple(target_n.shape)}, {tuple(online_all_n.shape)}")
    (V, B, D), (L, N, Dt) = online_n.shape, target_n.shape
    if Dt != D or tuple(online_all_n.shape) != (V, N, D) or min(V, B, D, L) < 1:
        raise ValueError(f"shape mismatch: online_n {tuple(online_n.shape)}, target_n "
                         f"{tuple(target_n.shape)}, online_all_n {tuple(online_all_n.shape)}")
    if D > kernels.MAX_BLOCK_D:  # plain comparisons only: under torch.compile D may be symbolic
        raise ValueError(f"relicv2_core_fused holds whole embedding rows on chip: D <= "
                         f"{kernels.MAX_BLOCK_D}, got D={D}; use implementation='reference'")
    if not 0 <= row_offset <= N - B:
        raise ValueError(f"row_offset={row_offset} puts rows {row_offset}..{row_offset + B - 1} "
                         f"outside the N={N} gathered samples")
    tensors = [online_n, target_n, online_all_n]
    if negative_offsets is not None:
        if negative_offsets.dim() != 1 or negative_offsets.dtype.is_floating_point \
                or negative_offsets.numel() > N - 1:
            raise ValueError("negative_offsets must be a 1-D integer tensor of at most N-1 distinct "
                             f"values in 1..N-1; got {negative_offsets.dtype} {tuple(negative_offsets.shape)}")
        tensors.append(negative_offsets)
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"all inputs must be on one device; got {[str(t.device) for t in tensors]}")
    for t in tensors[:3]:
        if t.dtype not in _DTYPES:
            raise TypeError(f"relicv2_core_fused supports float32, bfloat16 and float16, got {t.dtype}; "
                            "use implementation='reference' for other dtypes")
    return V, B, D, L, N


def _check_runnable(device: torch.device) -> None:
    """Raise a clear error where the kernels cannot run: CPU tensors without the interpreter."""
    if device.type != "cuda" and not kernels.INTERPRET:
        raise RuntimeError(
            f"relicv2_core_fused needs CUDA tensors (got {device}). On CPU the Triton kernel only runs "
            "under the interpreter: set TRITON_INTERPRET=1 before triton is imported "
            "(slow, for tests); otherwise use the loss with implementation='reference' (or 'auto').")


def _prepare(online_n, target_n, online_all_n, negative_offsets):
    """Contiguous operands of one common dtype, the candidate offsets (0 first) and kernel flags."""
    dtype = torch.promote_types(torch.promote_types(online_n.dtype, target_n.dtype), online_all_n.dtype)
    o, t, a = (x.detach().to(dtype).contiguous() for x in (online_n, target_n, online_all_n))
    if negative_offsets is None:
        offsets = torch.zeros(1, dtype=torch.int64, device=o.device)
    else:
        offsets = torch.cat([negative_offsets.new_zeros(1), negative_offsets]).to(torch.int64).contiguous()
    precision = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    flags = dict(ALL_NEGATIVES=negative_offsets is None, BLOCK_D=max(16, triton.next_power_of_2(o.shape[2])),
                 PRECISION=precision, UPCAST=kernels.INTERPRET)
    if kernels.INTERPRET:
        flags.update(kernels.INTERPRET_BLOCKS)
    return o, t, a, offsets, flags


def _launch_device(device: torch.device):
    """Context making `device` current for the launch (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def relicv2_fused_forward(online_n: torch.Tensor, target_n: torch.Tensor, online_all_n: torch.Tensor, *,
                          temperature: float, beta: float, row_offset: int,
                          negative_offsets: Optional[torch.Tensor],
                          terms: Optional[torch.Tensor] = None,
                          lse: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss [total, contrastive, invariance] (fp32, shape (3,)) and the log-sum-exps for backward.

    `terms` and `lse` ((2, V, L, B) fp32 each) may be passed to be written in place (tests poison
    them with NaN to prove every element is written); they are allocated otherwise.
    """
    V, B, D, L, N = _check_inputs(online_n, target_n, online_all_n, row_offset, negative_offsets)
    _check_runnable(online_n.device)
    o, t, a, offsets, flags = _prepare(online_n, target_n, online_all_n, negative_offsets)
    if terms is None:
        terms = torch.empty((2, V, L, B), dtype=torch.float32, device=o.device)
    if lse is None:
        lse = torch.empty((2, V, L, B), dtype=torch.float32, device=o.device)
    grid = lambda meta: (V, L, triton.cdiv(B, meta["BLOCK_M"]))  # noqa: E731
    with _launch_device(o.device):
        kernels.fwd_kernel[grid](o, t, a, offsets, terms, lse, B, N, D, V, L, row_offset,
                                 offsets.numel(), 1.0 / temperature, o.stride(0), o.stride(1),
                                 t.stride(0), t.stride(1), a.stride(0), a.stride(1), **flags)
    contrastive = terms[0].sum() / (V * L * B)
    invariance = terms[1].sum() / (V * L * B)
    return torch.stack([contrastive + beta * invariance, contrastive, invariance]), lse


def _grad_coefficients(grad_loss: torch.Tensor, beta: float, scale: float) -> torch.Tensor:
    """[a, c, e, s] with grad = s * sum_j (sum_k (a p_k - c q_k) t_k - e t_g), |a|, |c| <= 1.

    d<g, loss> = scale * [(g0 + g1) (E_p[t] - t_g) + (beta g0 + g2) (E_p[t] - E_q[t])]; dividing the
    weights by m = max(|g0 + g1 + beta g0 + g2|, |beta g0 + g2|) keeps the kernel's fp16/bf16 matmul
    operand a p - c q within [-2, 2] (a GradScaler's 65536 would overflow fp16), s = m * scale.
    """
    c_contrastive, c_invariance = grad_loss[0] + grad_loss[1], grad_loss[0] * beta + grad_loss[2]
    c_p = c_contrastive + c_invariance
    m = torch.maximum(c_p.abs(), c_invariance.abs()).clamp_min(1e-30)
    return torch.stack([c_p / m, c_invariance / m, c_contrastive / m, m * scale]).contiguous()


def relicv2_fused_backward(grad_loss: torch.Tensor, online_n: torch.Tensor, target_n: torch.Tensor,
                           online_all_n: torch.Tensor, lse: torch.Tensor, *, temperature: float,
                           beta: float, row_offset: int, negative_offsets: Optional[torch.Tensor],
                           grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gradient of <grad_loss, loss> w.r.t. `online_n` (its dtype), recomputing p and q.

    Per pair and row, d contrastive = (sum_k p_k t_k - t_g) / T and d invariance =
    (sum_k p_k t_k - sum_k q_k t_k) / T, over B * V * L; the coefficients stay on the device.
    """
    V, B, D, L, N = _check_inputs(online_n, target_n, online_all_n, row_offset, negative_offsets)
    _check_runnable(online_n.device)
    o, t, a, offsets, flags = _prepare(online_n, target_n, online_all_n, negative_offsets)
    coef = _grad_coefficients(grad_loss.to(device=o.device, dtype=torch.float32), beta,
                              1.0 / (temperature * B * V * L))
    if grad is None:
        grad = torch.empty((V, B, D), dtype=online_n.dtype, device=o.device)
    grid = lambda meta: (V, triton.cdiv(B, meta["BLOCK_M"]))  # noqa: E731
    with _launch_device(o.device):
        kernels.bwd_kernel[grid](o, t, a, offsets, lse.contiguous(), coef, grad, B, N, D,
                                 V, L, row_offset, offsets.numel(), 1.0 / temperature, o.stride(0),
                                 o.stride(1), t.stride(0), t.stride(1), a.stride(0), a.stride(1),
                                 grad.stride(0), grad.stride(1), **flags)
    return grad


@torch.library.custom_op("relic_fast::relicv2_core_fused_fwd", mutates_args=())
def _fwd_op(online_n: torch.Tensor, target_n: torch.Tensor, online_all_n: torch.Tensor,
            negative_offsets: Optional[torch.Tensor], temperature: float, beta: float,
            row_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Custom op around `relicv2_fused_forward`: (loss (3,), lse (2, V, L, B))."""
    return relicv2_fused_forward(online_n, target_n, online_all_n, temperature=temperature, beta=beta,
                                 row_offset=row_offset, negative_offsets=negative_offsets)


@_fwd_op.register_fake
def _fwd_fake(online_n, target_n, online_all_n, negative_offsets, temperature, beta, row_offset):
    """Shapes and dtypes of the forward outputs, for tracing (torch.compile, opcheck)."""
    V, B, _, L, _ = _check_inputs(online_n, target_n, online_all_n, row_offset, negative_offsets)
    return (online_n.new_empty((3,), dtype=torch.float32),
            online_n.new_empty((2, V, L, B), dtype=torch.float32))


@torch.library.custom_op("relic_fast::relicv2_core_fused_bwd", mutates_args=())
def _bwd_op(grad_loss: torch.Tensor, online_n: torch.Tensor, target_n: torch.Tensor,
            online_all_n: torch.Tensor, negative_offsets: Optional[torch.Tensor], lse: torch.Tensor,
            temperature: float, beta: float, row_offset: int) -> torch.Tensor:
    """Custom op around `relicv2_fused_backward`: the gradient w.r.t. online_n."""
    return relicv2_fused_backward(grad_loss, online_n, target_n, online_all_n, lse,
                                  temperature=temperature, beta=beta, row_offset=row_offset,
                                  negative_offsets=negative_offsets)


@_bwd_op.register_fake
def _bwd_fake(grad_loss, online_n, target_n, online_all_n, negative_offsets, lse, temperature, beta,
              row_offset):
    """Shape and dtype of the gradient, for tracing."""
    return torch.empty_like(online_n, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output) -> None:
    """Save the (already live) inputs and the 16-byte-per-row log-sum-exps for backward."""
    online_n, target_n, online_all_n, negative_offsets, temperature, beta, row_offset = inputs
    ctx.save_for_backward(online_n, target_n, online_all_n, negative_offsets, output[1])
    ctx.hyper = (temperature, beta, row_offset)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, _grad_lse):
    """Gradient flows into online_n only: target_n, online_all_n and q are constants."""
    online_n, target_n, online_all_n, negative_offsets, lse = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = _bwd_op(grad_loss, online_n, target_n, online_all_n, negative_offsets, lse, *ctx.hyper)
    return grad, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def relicv2_core_fused(online_n: torch.Tensor, target_n: torch.Tensor, online_all_n: torch.Tensor, *,
                       temperature: float, beta: float, row_offset: int,
                       negative_offsets: Optional[torch.Tensor]) -> torch.Tensor:
    """[total, contrastive, invariance] (fp32, shape (3,)) of the multi-view RELICv2 loss, fused.

    Same arguments and result as `relic_fast.loss.relicv2_core_reference`: online_n (V, B, D),
    target_n (L, N, D), online_all_n (V, N, D), all L2-normalized; rows of online_n are samples
    row_offset.. of the N gathered ones; negative_offsets None (all negatives) or the shared offsets.
    Differentiable w.r.t. online_n only. Needs CUDA tensors (or TRITON_INTERPRET=1 on CPU).
    """
    loss, _ = _fwd_op(online_n, target_n, online_all_n, negative_offsets, float(temperature),
                      float(beta), int(row_offset))
    return loss
