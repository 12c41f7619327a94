"""The RELICv2 multi-view loss: contrastive term plus KL invariance term over every view pair.

`relicv2_loss(online, target)` takes the online predictions of all L+S views, shaped (L+S, B, D)
with the L large views first, and the target projections of the L large views, shaped (L, B, D),
both raw (this module L2-normalizes them in float32, outside autocast). For each pair (online view
i, target view j) and local row b, with global index g = row_offset + b:

    z_bk  = <online_n[i,b], target_n[j,k]> / T           p_b = softmax over k in C_b of z_b
    z'_bk = <online_all_n[i,k], target_n[j,g]> / T       q_b = softmax over k in C_b of z'_b (no grad)
    contrastive_ij = mean_b -log p_b[g]
    invariance_ij  = mean_b KL(q_b || p_b)
    total = mean_ij contrastive_ij + beta * mean_ij invariance_ij

Candidates C_b: all N columns (N = B, or world*B with gathered targets), or with `num_negatives=n`
the **negative-subsampling scheme**: one set of n distinct offsets d, drawn uniformly from 1..N-1
(`torch.randperm(N-1)[:n] + 1`) once per loss call, shared by every row and view pair, gives
C_b = {g} U {(g + d) mod N}. Every other sample is a negative of b with probability n/(N-1) (an
unbiased subsample), rows never draw the positive twice, and the kernel reads a fixed-width gather.
With n >= N-1 every column is a candidate and the all-negatives path runs (the same set).

`relicv2_core_reference` is the plain PyTorch ground truth that the fused Triton kernel
(`relic_fast.kernels.relicv2_fused.relicv2_core_fused`) must match; the slow loop oracle in
`tests/support/loss_oracle.py` checks both. No gradient reaches `target` nor flows through q.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


class LossTerms(NamedTuple):
    """The loss and its parts, scalar tensors: the one definition of the loss terms.

    `total` (first) is what gets back-propagated. The step hands the terms on as one tensor in field order
    (`stack`); the non-finite guard, the log window, the logs, the live display and the plot take the terms'
    number and names from these fields (`LOSS_TERMS`, `LOSS_METRICS`), so a new term is a new field here,
    computed by the loss function, and nothing else."""

    total: torch.Tensor
    contrastive: torch.Tensor
    invariance: torch.Tensor

    def stack(self) -> torch.Tensor:
        """The terms as one 1-D tensor in field order: one device tensor, so the step returns it without a sync."""
        return torch.stack(tuple(self))


LOSS_TERMS: tuple[str, ...] = LossTerms._fields
"""The loss terms' names, `total` first: their order in the stacked terms the step returns."""

LOSS_METRICS: tuple[str, ...] = tuple("loss" if name == "total" else name for name in LOSS_TERMS)
"""The metric name of each loss term, in `LOSS_TERMS` order, as metrics.jsonl, the display and the plot name it:
the total is "loss", every part keeps its field name."""


def _terms(contrastive_rows: torch.Tensor, kl_rows: torch.Tensor, beta: float) -> torch.Tensor:
    """Stack [total, contrastive, invariance] from per-(i, j, b) terms (mean over all = sum_ij mean_b / VL)."""
    contrastive = contrastive_rows.mean()
    invariance = kl_rows.mean()
    return torch.stack([contrastive + beta * invariance, contrastive, invariance])


def _is_local_view(online_all_n: torch.Tensor, online_n: torch.Tensor, row_offset: int) -> bool:
    """True when online_all_n holds exactly online_n's values (single process: its detached alias)."""
    return (row_offset == 0 and online_all_n.shape == online_n.shape
            and online_all_n.data_ptr() == online_n.data_ptr() and online_all_n.stride() == online_n.stride())


def relicv2_core_reference(online_n: torch.Tensor, target_n: torch.Tensor, online_all_n: torch.Tensor,
                           *, temperature: float, beta: float, row_offset: int = 0,
                           negative_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """[total, contrastive, invariance] (shape (3,)) on L2-normalized embeddings, in plain PyTorch.

    online_n (V, B, D) local onlines (the only input that gets a gradient), target_n (L, N, D) all
    targets, online_all_n (V, N, D) all onlines (detached), row_offset the global index of local row
    0, negative_offsets None (all candidates) or the shared 1-D int64 offsets (see module docstring).
    """
    target_n = target_n.detach()
    online_all_n = online_all_n.detach()
    batch = online_n.shape[1]
    n_cols = target_n.shape[1]
    rows = torch.arange(batch, device=online_n.device) + row_offset
    target_rows = target_n[:, row_offset:row_offset + batch]                      # (L, B, D): t[j, g]
    if negative_offsets is None:
        # One batched matmul over all view pairs: logits (V, L, B, N), softmax along the columns.
        logits = torch.einsum("vbd,lnd->vlbn", online_n, target_n) / temperature
        log_p = logits.log_softmax(dim=-1)
        positive = log_p[..., torch.arange(batch, device=rows.device), rows]    # (V, L, B)
        with torch.no_grad():
            # q: the column direction of (online_all x target), anchor t[j, g] over every online k.
            if _is_local_view(online_all_n, online_n, row_offset):
                # Single process: online_all is online, so z'[b, k] = z[k, b]; reuse the logits.
                log_q = logits.detach().log_softmax(dim=-2).transpose(-1, -2)
            else:
                log_q = (torch.einsum("lbd,vnd->vlbn", target_rows, online_all_n) / temperature
                         ).log_softmax(dim=-1)
    else:
        # Fixed-width gather of the candidate columns: column 0 is the positive g itself.
        offsets = torch.cat([negative_offsets.new_zeros(1), negative_offsets]).to(rows.device)
        cols = (rows[:, None] + offsets[None, :]) % n_cols                          # (B, C)
        logits = torch.einsum("vbd,lbcd->vlbc", online_n, target_n[:, cols]) / temperature
        log_p = logits.log_softmax(dim=-1)
        positive = log_p[..., 0]
        with torch.no_grad():
            log_q = (torch.einsum("vbcd,lbd->vlbc", online_all_n[:, cols], target_rows) / temperature
                     ).log_softmax(dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=-1)                               # (V, L, B)
    return _terms(-positive, kl, beta)


def _triton_available() -> bool:
    """True when triton can be imported (the fused kernel's only extra dependency)."""
    return importlib.util.find_spec("triton") is not None


_FUSED_FALLBACK_WARNED = False


def choose_loss_implementation(implementation: str, device: torch.device) -> str:
    """The implementation that runs for `loss.implementation` on `device`: "auto" is the fused kernel on
    CUDA with Triton installed, else the reference."""
    if implementation not in ("auto", "reference", "fused"):
        raise ValueError(f"loss implementation must be 'auto', 'reference' or 'fused', got {implementation!r}")
    if implementation == "auto":
        return "fused" if device.type == "cuda" and _triton_available() else "reference"
    return implementation


def _resolve_core(implementation: str, device: torch.device) -> Callable[..., torch.Tensor]:
    """The core function for `implementation` ("auto", "reference" or "fused") on `device`."""
    global _FUSED_FALLBACK_WARNED
    requested, implementation = implementation, choose_loss_implementation(implementation, device)
    if implementation == "reference":
        return relicv2_core_reference
    try:
        from relic_fast.kernels.relicv2_fused import relicv2_core_fused
    except ImportError as err:
        if requested == "fused":
            raise RuntimeError("loss implementation 'fused' needs relic_fast.kernels.relicv2_fused "
                               f"(Triton); it could not be imported: {err}. Use 'reference' or "
                               "'auto'.") from err
        if not _FUSED_FALLBACK_WARNED:
            warnings.warn(f"fused RELICv2 loss unavailable ({err}); using the reference", stacklevel=3)
            _FUSED_FALLBACK_WARNED = True
        return relicv2_core_reference
    return relicv2_core_fused


def _gather_rows(online_n: torch.Tensor, target_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All-gather detached target_n and online_n over ranks along the batch axis.

    Returns (target_all (L, W*B, D), online_all (V, W*B, D), row_offset = rank * B). One collective:
    both tensors travel concatenated along the view axis.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    local = torch.cat([target_n.detach(), online_n.detach()]).contiguous()      # (L+V, B, D)
    views, batch, dim = local.shape
    gathered = local.new_empty((world * views, batch, dim))
    if hasattr(dist, "all_gather_into_tensor") and dist.get_backend() != "gloo":
        dist.all_gather_into_tensor(gathered, local)
    else:  # gloo on older torch lacks the flat collective; the list form works everywhere
        dist.all_gather(list(gathered.chunk(world)), local)
    gathered = gathered.view(world, views, batch, dim).transpose(0, 1).reshape(views, world * batch, dim)
    num_target = target_n.shape[0]
    return gathered[:num_target], gathered[num_target:], rank * batch


def draw_negative_offsets(n_cols: int, num_negatives: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n distinct offsets drawn uniformly from 1..n_cols-1 (int64): the shared negative subsample."""
    if not 1 <= num_negatives <= n_cols - 1:
        raise ValueError(f"num_negatives must be in 1..{n_cols - 1}, got {num_negatives}")
    return torch.randperm(n_cols - 1, device=device)[:num_negatives] + 1


def relicv2_loss_terms(online: torch.Tensor, target: torch.Tensor, *, temperature: float = 0.2,
                       beta: float = 1.0, num_negatives: int | None = None, implementation: str = "auto",
                       gather_targets: bool = False,
                       negative_offsets: torch.Tensor | None = None) -> LossTerms:
    """RELICv2 loss and its parts for online (L+S, B, D) against target (L, B, D), both raw.

    Normalizes in float32 (float64 stays float64) with autocast off, all-gathers under an initialized
    process group when `gather_targets`, draws `num_negatives` shared offsets unless
    `negative_offsets` is given (None or 0: every column), and dispatches to the reference or fused
    core. Gradients flow to `online` only.
    """
    if online.ndim != 3 or target.ndim != 3 or online.shape[1:] != target.shape[1:]:
        raise ValueError(f"expected online (V, B, D) and target (L, B, D), got {tuple(online.shape)} "
                         f"and {tuple(target.shape)}")
    if target.shape[0] > online.shape[0]:
        raise ValueError("target has more views than online; online must hold the L large views first")
    dtype = torch.promote_types(online.dtype, torch.float32)
    with torch.autocast(device_type=online.device.type, enabled=False):
        online_n = F.normalize(online.to(dtype), dim=-1)
        target_n = F.normalize(target.detach().to(dtype), dim=-1)
        online_all_n, row_offset = online_n.detach(), 0
        if gather_targets and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            target_n, online_all_n, row_offset = _gather_rows(online_n, target_n)
        n_cols = target_n.shape[1]
        if negative_offsets is None and num_negatives and num_negatives < n_cols - 1:
            negative_offsets = draw_negative_offsets(n_cols, num_negatives, online.device)
        if negative_offsets is not None:
            negative_offsets = negative_offsets.to(device=online.device, dtype=torch.int64)
            if negative_offsets.numel() >= n_cols - 1:
                negative_offsets = None  # every column is a candidate: same set, faster path
        core = _resolve_core(implementation, online.device)
        terms = core(online_n, target_n, online_all_n, temperature=temperature, beta=beta,
                     row_offset=row_offset, negative_offsets=negative_offsets)
    return LossTerms(*terms.unbind())  # both cores return the terms stacked in field order


def relicv2_loss(online: torch.Tensor, target: torch.Tensor, *, temperature: float = 0.2,
                 beta: float = 1.0, num_negatives: int | None = None, implementation: str = "auto",
                 gather_targets: bool = False, negative_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar RELICv2 loss (`relicv2_loss_terms(...).total`); see the module docstring."""
    return relicv2_loss_terms(online, target, temperature=temperature, beta=beta,
                              num_negatives=num_negatives, implementation=implementation,
                              gather_targets=gather_targets, negative_offsets=negative_offsets).total
