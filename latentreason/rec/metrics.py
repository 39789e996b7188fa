"""Full-ranking metrics: every item is a candidate (no sampled negatives), one relevant item per user.

Ties count against the target (an item scoring the same as the target ranks above it), so a model that
scores every item alike gets zero, not a perfect score. Items the user has seen stay candidates, as in
RecBole's and ReaRec's sequential evaluation.
"""

from __future__ import annotations

import torch

KS = (10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B] 0-based rank of each target among all items; `scores` [B, num_items + 1] (column 0 is padding)."""
    candidates = scores[:, 1:]  # [B, N]
    target = scores.gather(1, targets[:, None])  # [B, 1]
    above = (candidates > target).sum(1)  # [B]
    tied_others = (candidates == target).sum(1) - 1  # [B] the target ties with itself
    return above + tied_others


def ranking_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k (hit rate: one relevant item) and NDCG@k = 1 / log2(rank + 2) inside the top k, mean over users."""
    ranks = ranks.double()
    gains = 1.0 / torch.log2(ranks + 2)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.double().mean())
        out[f"ndcg@{k}"] = float(torch.where(hit, gains, 0.0).mean())
    return out
