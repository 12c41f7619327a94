"""Triton kernels of the fused multi-view RELICv2 loss (the `@triton.jit` layer).

The launchers in `relicv2_fused.py` call these; nothing else should. One program handles a tile
of BLOCK_M rows of one online view i (and, in the forward, one target view j). For each row b
(global index g = row_offset + b) it streams the candidates k of C_b and keeps FlashAttention-style
running log-sum-exps of two softmaxes without ever writing a logit to memory:
  z_bk  = <online[i, b], target[j, k]> / T      (p: the online row as anchor)
  z'_bk = <online_all[i, k], target[j, g]> / T  (q: the target row as anchor, constant)
Forward (grid V x L x row tiles) writes per (i, j, b): contrastive = lse_p - z_bg,
KL(q || p) = E_q[z' - z] - lse_q + lse_p, lse_p and lse_q. Backward (grid V x row tiles, a loop
over j inside so every gradient row is written once, no atomics) recomputes p and q from the saved
log-sum-exps and accumulates grad_o_b = s * sum_j (sum_k (a p_k - c q_k) t_k - e t_g), with a, c,
e, s read from device memory (they carry the incoming gradient: no host sync; |a|, |c| <= 1 keep
the fp16/bf16 matmul operand a p - c q in range whatever the gradient scale).

Candidates: ALL_NEGATIVES -> every k < N, in BLOCK_N tiles of two tensor-core matmuls; else the
fixed-width gather k = (g + d) mod N over `offsets` (d = 0 first, then the negative offsets): for
a fixed d the rows of a tile read a contiguous (wrapped) block of targets.

On CUDA each kernel is autotuned once per shape (`_TUNE_KEY`) over a fixed list of tile configs,
pruned by `prune_configs` to those whose shared memory fits. Under TRITON_INTERPRET=1 (CPU tests)
there is no autotuning (one small tile, `INTERPRET_BLOCKS`), and bf16/fp16 operands are widened to
fp32 before `tl.dot` (UPCAST): the interpreter's dot mishandles bf16, and fp32 accumulation of exact
products is what the GPU computes anyway.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
"""Whether these kernels are built for the Triton interpreter (decided when this module is loaded)."""


@triton.jit
def _load_rows(base, rows, row_stride, cols, row_mask, col_mask):
    """A (rows x cols) block of a row-major matrix, zeros outside the masks."""
    ptrs = base + rows[:, None].to(tl.int64) * row_stride + cols[None, :]
    return tl.load(ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@triton.jit
def _dense_stats(o, tg, target_j, online_i, s_tb, s_ab, N, D, inv_t,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Over all N candidates: (lse_p, lse_q, E_q[z' - z]) of each row, by online softmax."""
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    m_p = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_p = tl.zeros([BLOCK_M], tl.float32)
    m_q = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_q = tl.zeros([BLOCK_M], tl.float32)
    s_qd = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, N, BLOCK_N):
        ks = k0 + tl.arange(0, BLOCK_N)
        k_mask = ks < N
        tile_mask = k_mask[:, None] & col_mask[None, :]
        tk = tl.load(target_j + ks[:, None].to(tl.int64) * s_tb + cols[None, :], mask=tile_mask, other=0.0)
        ak = tl.load(online_i + ks[:, None].to(tl.int64) * s_ab + cols[None, :], mask=tile_mask, other=0.0)
        if UPCAST:
            tk = tk.to(tl.float32)
            ak = ak.to(tl.float32)
        z = tl.dot(o, tl.trans(tk), input_precision=PRECISION) * inv_t
        zq = tl.dot(tg, tl.trans(ak), input_precision=PRECISION) * inv_t
        diff = zq - z  # before masking: -inf - -inf would be NaN
        z = tl.where(k_mask[None, :], z, float("-inf"))
        zq = tl.where(k_mask[None, :], zq, float("-inf"))
        m_new = tl.maximum(m_p, tl.max(z, 1))
        l_p = l_p * tl.exp(m_p - m_new) + tl.sum(tl.exp(z - m_new[:, None]), 1)
        m_p = m_new
        mq_new = tl.maximum(m_q, tl.max(zq, 1))
        alpha = tl.exp(m_q - mq_new)
        e = tl.exp(zq - mq_new[:, None])
        l_q = l_q * alpha + tl.sum(e, 1)
        s_qd = s_qd * alpha + tl.sum(tl.where(k_mask[None, :], e * diff, 0.0), 1)
        m_q = mq_new
    return m_p + tl.log(l_p), m_q + tl.log(l_q), s_qd / l_q


@triton.jit
def _offset_stats(o, tg, g, target_j, online_i, offsets, num_candidates, s_tb, s_ab, N, D, inv_t,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Over C_b = {(g + d) mod N for d in offsets}: (lse_p, lse_q, E_q[z' - z]) of each row."""
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    of = o.to(tl.float32)
    tgf = tg.to(tl.float32)
    m_p = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_p = tl.zeros([BLOCK_M], tl.float32)
    m_q = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_q = tl.zeros([BLOCK_M], tl.float32)
    s_qd = tl.zeros([BLOCK_M], tl.float32)
    for c in range(0, num_candidates):
        k = (g + tl.load(offsets + c)) % N
        tk = tl.load(target_j + k[:, None] * s_tb + cols[None, :], mask=col_mask[None, :], other=0.0)
        ak = tl.load(online_i + k[:, None] * s_ab + cols[None, :], mask=col_mask[None, :], other=0.0)
        tk = tk.to(tl.float32)
        ak = ak.to(tl.float32)
        z = tl.sum(of * tk, 1) * inv_t
        zq = tl.sum(ak * tgf, 1) * inv_t
        m_new = tl.maximum(m_p, z)
        l_p = l_p * tl.exp(m_p - m_new) + tl.exp(z - m_new)
        m_p = m_new
        mq_new = tl.maximum(m_q, zq)
        alpha = tl.exp(m_q - mq_new)
        e = tl.exp(zq - mq_new)
        l_q = l_q * alpha + e
        s_qd = s_qd * alpha + e * (zq - z)
        m_q = mq_new
    return m_p + tl.log(l_p), m_q + tl.log(l_q), s_qd / l_q


@triton.jit
def relicv2_fwd_kernel(online, target, online_all, offsets, terms, lse,
                       B, N, D, V, L, row_offset, num_candidates, inv_t,
                       s_ov, s_ob, s_tv, s_tb, s_av, s_ab,
                       ALL_NEGATIVES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Per (online view i, target view j, row b): contrastive, KL -> terms[2, V, L, B];
    lse_p, lse_q -> lse[2, V, L, B]."""
    i = tl.program_id(0)
    j = tl.program_id(1)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < B
    g = row_offset + rows
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    online_i = online_all + i.to(tl.int64) * s_av
    target_j = target + j.to(tl.int64) * s_tv
    o = _load_rows(online + i.to(tl.int64) * s_ov, rows, s_ob, cols, row_mask, col_mask)
    tg = _load_rows(target_j, g, s_tb, cols, row_mask, col_mask)
    if UPCAST:
        o = o.to(tl.float32)
        tg = tg.to(tl.float32)
    if ALL_NEGATIVES:
        lse_p, lse_q, e_qd = _dense_stats(o, tg, target_j, online_i, s_tb, s_ab, N, D, inv_t,
                                          BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
    else:
        lse_p, lse_q, e_qd = _offset_stats(o, tg, g, target_j, online_i, offsets, num_candidates,
                                           s_tb, s_ab, N, D, inv_t, BLOCK_M, BLOCK_D)
    z_pos = tl.sum(o.to(tl.float32) * tg.to(tl.float32), 1) * inv_t
    plane = V * L * B
    at = (i * L + j) * B + rows
    tl.store(terms + at, lse_p - z_pos, mask=row_mask)
    tl.store(terms + plane + at, e_qd - lse_q + lse_p, mask=row_mask)
    tl.store(lse + at, lse_p, mask=row_mask)
    tl.store(lse + plane + at, lse_q, mask=row_mask)


@triton.jit
def _dense_grad(acc, o, tg, lse_p, lse_q, coef_p, coef_q, target_j, online_i, s_tb, s_ab, N, D,
                inv_t, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + sum over all k of (coef_p p_k - coef_q q_k) target[j, k], p and q recomputed."""
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    for k0 in range(0, N, BLOCK_N):
        ks = k0 + tl.arange(0, BLOCK_N)
        k_mask = ks < N
        tile_mask = k_mask[:, None] & col_mask[None, :]
        tk = tl.load(target_j + ks[:, None].to(tl.int64) * s_tb + cols[None, :], mask=tile_mask, other=0.0)
        ak = tl.load(online_i + ks[:, None].to(tl.int64) * s_ab + cols[None, :], mask=tile_mask, other=0.0)
        if UPCAST:
            tk = tk.to(tl.float32)
            ak = ak.to(tl.float32)
        z = tl.dot(o, tl.trans(tk), input_precision=PRECISION) * inv_t
        zq = tl.dot(tg, tl.trans(ak), input_precision=PRECISION) * inv_t
        p = tl.exp(tl.where(k_mask[None, :], z, float("-inf")) - lse_p[:, None])
        q = tl.exp(tl.where(k_mask[None, :], zq, float("-inf")) - lse_q[:, None])
        w = (coef_p * p - coef_q * q).to(tk.dtype)  # the operand precision, as FlashAttention does
        acc += tl.dot(w, tk, input_precision=PRECISION)
    return acc


@triton.jit
def _offset_grad(acc, o, tg, g, lse_p, lse_q, coef_p, coef_q, target_j, online_i, offsets,
                 num_candidates, s_tb, s_ab, N, D, inv_t, BLOCK_D: tl.constexpr):
    """acc + sum over C_b of (coef_p p_k - coef_q q_k) target[j, k], p and q recomputed."""
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    of = o.to(tl.float32)
    tgf = tg.to(tl.float32)
    for c in range(0, num_candidates):
        k = (g + tl.load(offsets + c)) % N
        tk = tl.load(target_j + k[:, None] * s_tb + cols[None, :], mask=col_mask[None, :], other=0.0)
        ak = tl.load(online_i + k[:, None] * s_ab + cols[None, :], mask=col_mask[None, :], other=0.0)
        tk = tk.to(tl.float32)
        ak = ak.to(tl.float32)
        p = tl.exp(tl.sum(of * tk, 1) * inv_t - lse_p)
        q = tl.exp(tl.sum(ak * tgf, 1) * inv_t - lse_q)
        acc += (coef_p * p - coef_q * q)[:, None] * tk
    return acc


@triton.jit
def relicv2_bwd_kernel(online, target, online_all, offsets, lse, coef, grad,
                       B, N, D, V, L, row_offset, num_candidates, inv_t,
                       s_ov, s_ob, s_tv, s_tb, s_av, s_ab, s_gv, s_gb,
                       ALL_NEGATIVES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """grad[i, b] = coef3 * sum_j (sum_k (coef0 p_k - coef1 q_k) t_jk - coef2 t_jg), each row written once."""
    i = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < B
    g = row_offset + rows
    cols = tl.arange(0, BLOCK_D)
    col_mask = cols < D
    coef_p = tl.load(coef)
    coef_q = tl.load(coef + 1)
    coef_g = tl.load(coef + 2)
    coef_out = tl.load(coef + 3)
    online_i = online_all + i.to(tl.int64) * s_av
    o = _load_rows(online + i.to(tl.int64) * s_ov, rows, s_ob, cols, row_mask, col_mask)
    if UPCAST:
        o = o.to(tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for j in range(0, L):
        target_j = target + j * s_tv
        tg = _load_rows(target_j, g, s_tb, cols, row_mask, col_mask)
        if UPCAST:
            tg = tg.to(tl.float32)
        lse_p = tl.load(lse + (i * L + j) * B + rows, mask=row_mask, other=0.0)
        lse_q = tl.load(lse + V * L * B + (i * L + j) * B + rows, mask=row_mask, other=0.0)
        if ALL_NEGATIVES:
            acc = _dense_grad(acc, o, tg, lse_p, lse_q, coef_p, coef_q, target_j, online_i,
                              s_tb, s_ab, N, D, inv_t, BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
        else:
            acc = _offset_grad(acc, o, tg, g, lse_p, lse_q, coef_p, coef_q, target_j, online_i,
                               offsets, num_candidates, s_tb, s_ab, N, D, inv_t, BLOCK_D)
        acc -= coef_g * tg.to(tl.float32)
    out = grad + i.to(tl.int64) * s_gv + rows[:, None].to(tl.int64) * s_gb + cols[None, :]
    tl.store(out, acc * coef_out, mask=row_mask[:, None] & col_mask[None, :])


# Whole embedding rows (BLOCK_D = D padded to a power of 2, <= 512) live in registers / shared
# memory. The last configs (one pipeline stage, small tiles) fit fp32 rows of D = 256..512 in an
# H100's 228 KB of shared memory when the larger ones do not (`prune_configs` drops those before
# compiling; the autotuner also skips any that fail). Untuned: starting points for the GPU.
# Compiled offline for sm_90 (D = 256, bf16), every config uses 255 registers and most spill
# (ptxas -v: 0.1-2 KB spill stores per thread; 8 warps spill least), so tuning on an H100 is due.
_FWD_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
                for m, n, w, st in [(64, 64, 4, 3), (64, 64, 8, 3), (64, 32, 8, 3), (128, 64, 8, 2),
                                    (32, 64, 4, 3), (64, 32, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)]]
_BWD_CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
                for m, n, w, st in [(64, 64, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2), (128, 32, 8, 2),
                                    (32, 32, 4, 3), (64, 32, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)]]
_TUNE_KEY = ["B", "N", "D", "L", "ALL_NEGATIVES", "PRECISION"]

SHARED_MEMORY_BUDGET = 224 * 1024
"""Bytes of shared memory a config may plan for (an H100 SM offers 228 KB to one block)."""


def prune_configs(configs, named_args, **kwargs):
    """The configs worth compiling for this call (ptxas takes minutes on the big fp32 ones).

    All negatives: drop tiles whose estimated shared memory, elem * BLOCK_D * (2 BLOCK_M + 2 BLOCK_N
    * max(1, stages - 1)) (the row tiles plus the pipelined candidate tiles; it matched the compiled
    sm_90 kernels to within 50%, erring high), exceeds the budget. Gather path: BLOCK_N is unused and
    nothing is staged, so keep one config per (BLOCK_M <= 64, warps): the rows live in registers.
    """
    elem = named_args["online"].element_size()
    block_d = kwargs["BLOCK_D"]
    if not kwargs["ALL_NEGATIVES"]:
        unique = {}
        for c in configs:
            if c.kwargs["BLOCK_M"] <= 64:
                unique.setdefault((c.kwargs["BLOCK_M"], c.num_warps), c)
        return list(unique.values()) or configs[-1:]
    fit = [c for c in configs if elem * block_d * (2 * c.kwargs["BLOCK_M"] + 2 * c.kwargs["BLOCK_N"]
                                                   * max(1, c.num_stages - 1)) <= SHARED_MEMORY_BUDGET]
    return fit or configs[-1:]


MAX_BLOCK_D = 512
"""Largest padded embedding size the kernels take (whole rows are held on chip)."""

INTERPRET_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 16}
"""Fixed tiles under the interpreter: small, so that small test shapes span several tiles."""

if INTERPRET:  # no autotuning: one config, passed by the launcher
    fwd_kernel, bwd_kernel = relicv2_fwd_kernel, relicv2_bwd_kernel
else:  # CUDA: tuned once per shape
    _prune = {"early_config_prune": prune_configs}
    fwd_kernel = triton.autotune(configs=_FWD_CONFIGS, key=_TUNE_KEY, prune_configs_by=_prune)(relicv2_fwd_kernel)
    bwd_kernel = triton.autotune(configs=_BWD_CONFIGS, key=_TUNE_KEY, prune_configs_by=_prune)(relicv2_bwd_kernel)
