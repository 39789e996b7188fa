"""Soft inputs: a probability-weighted mixture of token embeddings over the top-k tokens of a distribution.

Only the k kept rows of the embedding matrix are gathered through `embed` (which applies any scaling the model's
embedding does), never a dense p @ E over the vocabulary; the input stays in the embeddings' span. Leaving out
mass m moves it from p @ E by at most 2m max_i |E_i|.
"""

from __future__ import annotations

import torch

from latentreason.errors import ConfigError


def mix(embed, scores: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """sum_i softmax(scores)_i embed(id_i). scores, ids: [.., k] -> [.., d]."""
    embeds = embed(ids)  # [.., k, d]
    weights = scores.to(torch.promote_types(scores.dtype, embeds.dtype)).softmax(-1)  # [.., k] never below float32
    return (weights[..., None] * embeds).sum(-2)  # [.., d]


def topk_mixture(embed, logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """The mixture over the `top_k` largest logits, renormalised over those. logits: [.., V] -> [.., d]."""
    top, ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [.., k]
    return mix(embed, top, ids)


def normalized_mixture(embed, logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """HRPO's h^ = sum_v p_v e_v / sqrt(sum_v p_v^2) over the `top_k` largest logits, p = softmax(logits) there.
    The ratio does not change when p is rescaled, so renormalising over the top-k costs nothing; with top_k = V it
    is exactly the full sum. logits: [.., V] -> [.., d]."""
    top, ids = logits.topk(min(top_k, logits.shape[-1]), dim=-1)  # [.., k]
    mixture = mix(embed, top, ids)  # [.., d] float32 or wider
    return mixture / top.to(mixture.dtype).softmax(-1).norm(dim=-1, keepdim=True)  # divided by |p| [.., 1]


def superposition(embed, logits: torch.Tensor, top_k: int, temperature: float = 1.0, gumbel_tau: float = 0.0):
    """A Latent-SFT latent token (arXiv 2510.15522): the top-k mixture of softmax(logits / temperature); with
    `gumbel_tau` > 0 the weights are a Gumbel-softmax sample over the k log-probabilities instead (the paper's v2,
    training only; the draws come from torch's global generator, which the trainer seeds). [.., V] -> [.., d]."""
    if top_k < 1 or temperature <= 0:
        raise ConfigError(f"superposition: top_k must be >= 1 and temperature > 0, got {top_k} and {temperature}")
    logp = (logits.float() / temperature).log_softmax(-1)  # [.., V]
    kept, ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1)  # [.., k]
    if gumbel_tau > 0:
        uniform = torch.rand_like(kept).clamp(min=1e-20)
        kept = (kept - (-uniform.log()).log()) / gumbel_tau  # log-probs + Gumbel noise, sharpened by tau
    return mix(embed, kept, ids)
