"""Slow, explicit-loop float64 oracle of the RELICv2 multi-view loss (the MATH of the interface).

Shared by `test_loss.py` and the fused-kernel tests: it loops over online view i, target view j
and local row b, builds the candidate set C_b as a Python list and evaluates the formulas term by
term, so that it shares no batching trick with `relic_fast.loss.relicv2_core_reference` or with
the Triton kernel. Differentiable w.r.t. `online_n` only (targets and q carry no gradient).
Tests import it as `from tests.support.loss_oracle import oracle_core, oracle_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def candidate_columns(g: int, n_cols: int, negative_offsets: torch.Tensor | None) -> list[int]:
    """C_b for the row with global index `g`: every column, or g plus (g + d) mod N for each offset d."""
    if negative_offsets is None:
        return list(range(n_cols))
    offsets = [int(d) for d in negative_offsets.tolist()]
    assert len(set(offsets)) == len(offsets), "negative offsets must be distinct"
    assert all(1 <= d <= n_cols - 1 for d in offsets), "negative offsets must lie in 1..N-1"
    return [g] + [(g + d) % n_cols for d in offsets]


def oracle_core(online_n: torch.Tensor, target_n: torch.Tensor, online_all_n: torch.Tensor, *,
                temperature: float, beta: float, row_offset: int = 0,
                negative_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """[total, contrastive, invariance] of the RELICv2 loss on already-normalized embeddings.

    online_n (V, B, D), target_n (L, N, D), online_all_n (V, N, D): the same contract as
    `relicv2_core_reference`. Computed in float64 with explicit Python loops.
    """
    online_n = online_n.double()
    target_n = target_n.detach().double()
    online_all_n = online_all_n.detach().double()
    num_online, batch, _ = online_n.shape
    num_target, n_cols, _ = target_n.shape
    contrastive = online_n.new_zeros(())
    invariance = online_n.new_zeros(())
    for i in range(num_online):
        for j in range(num_target):
            for b in range(batch):
                g = row_offset + b
                cols = candidate_columns(g, n_cols, negative_offsets)
                # z_bk = <online[i,b], target[j,k]> / T ; z'_bk = <online_all[i,k], target[j,g]> / T
                z = torch.stack([online_n[i, b] @ target_n[j, k] for k in cols]) / temperature
                z_rev = torch.stack([online_all_n[i, k] @ target_n[j, g] for k in cols]) / temperature
                log_p = z - torch.logsumexp(z, dim=0)
                log_q = z_rev - torch.logsumexp(z_rev, dim=0)
                positive = cols.index(g)
                contrastive = contrastive - log_p[positive] / batch
                invariance = invariance + (log_q.exp() * (log_q - log_p)).sum() / batch
    pairs = num_online * num_target
    contrastive = contrastive / pairs
    invariance = invariance / pairs
    return torch.stack([contrastive + beta * invariance, contrastive, invariance])


def oracle_loss(online: torch.Tensor, target: torch.Tensor, *, temperature: float = 0.2,
                beta: float = 1.0, negative_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Single-process oracle on raw embeddings: online (L+S, B, D), target (L, B, D) -> (3,) float64."""
    online_n = F.normalize(online.double(), dim=-1)
    target_n = F.normalize(target.detach().double(), dim=-1)
    return oracle_core(online_n, target_n, online_n.detach(), temperature=temperature, beta=beta,
                       row_offset=0, negative_offsets=negative_offsets)
