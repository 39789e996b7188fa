"""KaVa's compression of the teacher's CoT cache: which M CoT tokens each layer's KV head keeps.

Per layer and KV head, every CoT token gets

    score = lam * importance + (1 - lam) * redundancy

- importance: the attention the answer tokens pay to the token, averaged over the answer tokens and over
  the query heads that read this KV head (grouped-query attention), then renormalised to sum to 1 over
  the CoT (our choice: both terms are then distributions over the CoT, so `lam` weighs like with like).
- redundancy: softmax over the CoT of minus the token key's mean cosine similarity to the other CoT keys
  (a token like the rest scores low, so its near-duplicates are evicted first).

The M best tokens are kept in their original order; padding and prompt or answer tokens never are. A row
whose CoT has fewer than M tokens keeps all of them and marks the missing slots invalid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentreason.model.attention_access import unrotated_keys


def eviction_scores(
    attentions: torch.Tensor, keys: torch.Tensor, cot_mask: torch.Tensor, answer_mask: torch.Tensor, lam: float
) -> torch.Tensor:
    """Scores of one layer's positions per KV head, -inf outside the CoT.

    attentions: [B, Hq, T, T] probabilities (query, key); keys: [B, Hkv, T, D]; cot_mask, answer_mask: [B, T] bool.
    Returns [B, Hkv, T].
    """
    bsz, query_heads, length, _ = attentions.shape
    kv_heads = keys.shape[1]
    # Query head h * G + g reads KV head h (transformers' repeat_kv order).
    grouped = attentions.float().view(bsz, kv_heads, query_heads // kv_heads, length, length)  # [B, Hkv, G, T, T]
    # Selected, not multiplied by the mask: a pad's query row may hold NaN (a fully masked softmax).
    from_answers = torch.where(answer_mask[:, None, None, :, None], grouped, 0.0)  # [B, Hkv, G, T, T]
    readers = answer_mask.sum(-1).clamp(min=1) * (query_heads // kv_heads)  # [B] answer queries x group heads
    paid = from_answers.sum(dim=(2, 3)) / readers[:, None, None]  # [B, Hkv, T]
    cot = cot_mask[:, None, :]  # [B, 1, T]
    paid = paid.masked_fill(~cot, 0.0)
    importance = paid / paid.sum(-1, keepdim=True).clamp(min=torch.finfo(paid.dtype).tiny)  # [B, Hkv, T]

    unit = F.normalize(keys.float(), dim=-1)  # [B, Hkv, T, D]
    cosine = unit @ unit.transpose(-1, -2)  # [B, Hkv, T, T]
    others = cot_mask[:, :, None] & cot_mask[:, None, :]  # [B, T, T] pairs of CoT tokens
    others &= ~torch.eye(length, dtype=torch.bool, device=keys.device)
    mean_cosine = (cosine * others[:, None]).sum(-1) / others.sum(-1).clamp(min=1)[:, None]  # [B, Hkv, T]
    redundancy = torch.softmax((-mean_cosine).masked_fill(~cot, float("-inf")), dim=-1)  # NaN for rows with no CoT
    score = lam * importance + (1.0 - lam) * redundancy
    return score.masked_fill(~cot, float("-inf"))  # [B, Hkv, T]


def kept_positions(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [B, H, keep] in increasing order, valid [B, H, keep]) of the `keep` best-scoring positions.

    scores: [B, H, T], -inf where a position may not be kept; invalid slots (fewer candidates than `keep`)
    come last and hold position 0.
    """
    length = scores.shape[-1]
    best = scores.topk(min(keep, length), dim=-1)
    positions = best.indices.masked_fill(best.values == float("-inf"), length)  # not keepable: sorted last
    positions = F.pad(positions, (0, keep - positions.shape[-1]), value=length).sort(dim=-1).values  # [B, H, keep]
    valid = positions < length
    return positions.masked_fill(~valid, 0), valid


def gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states [B, H, T, D] at positions [B, H, M] -> [B, H, M, D]."""
    return states.gather(2, positions[..., None].expand(-1, -1, -1, states.shape[-1]))


def compress_layer(
    backbone,
    keys: torch.Tensor,
    values: torch.Tensor,
    attentions: torch.Tensor,
    positions: torch.Tensor,
    cot_mask: torch.Tensor,
    answer_mask: torch.Tensor,
    lam: float,
    keep: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One teacher layer's kept (keys before RoPE, values, valid): [B, Hkv, keep, D], [B, Hkv, keep, D], [B, Hkv, keep].

    keys, values: the layer's cache [B, Hkv, T, D]; attentions: [B, Hq, T, T]; positions: [B, T] the keys'.
    Redundancy compares keys before RoPE too, so two tokens' similarity does not depend on their distance.
    """
    plain = unrotated_keys(backbone, keys, positions)  # [B, Hkv, T, D]
    scores = eviction_scores(attentions, plain, cot_mask, answer_mask, lam)  # [B, Hkv, T]
    kept, valid = kept_positions(scores, keep)
    return gather_positions(plain, kept), gather_positions(values, kept), valid
