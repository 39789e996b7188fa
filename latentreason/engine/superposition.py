"""A latent token as a superposition of vocabulary embeddings (Latent-SFT, arXiv 2510.15522).

The input at a latent slot is sum_i w_i x embed(id_i) over the top-k ids of softmax(logits / tau), the weights
renormalised over those k: it stays in the column space of the embedding matrix. Only the k kept rows are
gathered through `lm.embed` (which applies any scaling the model's embedding does), never a dense p @ E over
the vocabulary. With `gumbel_tau` > 0 the weights are a Gumbel-softmax sample over the k log-probabilities
(the paper's v2, training only); the draws come from torch's global generator, which the trainer seeds.
"""

from __future__ import annotations

import torch

from latentreason.errors import ConfigError


def superposition(
    lm, logits: torch.Tensor, top_k: int, temperature: float = 1.0, gumbel_tau: float = 0.0
) -> torch.Tensor:
    """The mixed input embeddings [..., d] from next-token logits [..., V]."""
    if top_k < 1 or temperature <= 0:
        raise ConfigError(f"superposition: top_k must be >= 1 and temperature > 0, got {top_k} and {temperature}")
    logp = (logits.float() / temperature).log_softmax(-1)  # [..., V]
    kept, ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1)  # [..., k]
    if gumbel_tau > 0:
        uniform = torch.rand_like(kept).clamp(min=1e-20)
        kept = (kept - (-uniform.log()).log()) / gumbel_tau  # log-probs + Gumbel noise, sharpened by tau
    weights = kept.softmax(-1)  # [..., k] renormalised over the kept ids
    embeds = lm.embed(ids)  # [..., k, d] only the kept rows of the embedding matrix
    return (weights.to(embeds.dtype)[..., None] * embeds).sum(-2)  # [..., d]
