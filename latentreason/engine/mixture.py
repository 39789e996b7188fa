"""Soft inputs: a probability-weighted mixture of token embeddings over the top-k tokens of a distribution."""

from __future__ import annotations

import torch


def topk_mixture(embed, logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """sum_i p~_i embed(id_i) over the `top_k` largest logits, p~ = softmax over those only. logits: [.., V] ->
    [.., d]. Only the k rows of the embedding matrix are gathered through `embed` (which applies any scaling the
    model's embedding does), never a dense p @ E. Leaving out mass m moves it from p @ E by at most 2m max_i |E_i|."""
    top, ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [.., k]
    embeds = embed(ids)  # [.., k, d]
    weights = top.to(torch.promote_types(top.dtype, embeds.dtype)).softmax(-1)  # [.., k] never below float32
    return (weights[..., None] * embeds).sum(-2)  # [.., d]
