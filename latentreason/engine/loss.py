"""Next-token cross-entropy with the output head run only where there is a label."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from latentreason.engine.batch import IGNORE
from latentreason.engine.mixture import topk_mixture


def next_token_loss(lm, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of predicting labels[t] from hidden[t-1] with the model's LM head.

    hidden: [B, L, d]; labels: [B, L] with IGNORE where there is nothing to predict.
    """
    return shifted_ce(lm.lm_head, hidden, labels)


def shifted_ce(head, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`next_token_loss` for any output head (e.g. a separate step decoder's); returns (loss, count)."""
    targets = labels[:, 1:]  # [B, L-1]
    keep = targets != IGNORE  # [B, L-1]
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    logits = head(hidden[:, :-1][keep])  # [N, V]
    return F.cross_entropy(logits.float(), targets[keep]), count


# Logits of one chunk of positions held at once, in elements: 2^26 float32 = 256 MiB.
LOGITS_BUDGET = 1 << 26


def chosen_logprobs(
    head, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0, chunk=None
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature) at each position's token, without [B, T, V] logits.

    hidden: [B, T, d]; tokens: [B, T], or [B, T, W] for W tokens per position whose log-probs are summed (one
    head call for all W); mask: [B, T]. Returns float32 [B, T], 0 outside the mask (see `over_positions`).
    """

    def score(h, target):  # [k, d], [k] or [k, W] -> [k]
        logits = head(h).float() / temperature  # [k, V]
        return logits.log_softmax(-1).gather(-1, target.reshape(target.shape[0], -1)).sum(-1)  # as the sampler does

    return over_positions(score, mask, (hidden, tokens), chunk or max(1, LOGITS_BUDGET // head.weight.shape[0]))


def soft_input_logdensity(
    head, embed, hidden, inputs, mask, temperature: float, top_k: int, sigma: float, chunk=None
) -> torch.Tensor:
    """log N(input; mu, sigma^2 I) of noisy soft inputs (Soft Tokens, Hard Truths), mu = the top-k mixture of
    softmax(head(hidden) / temperature) (engine.mixture), summed over the d dimensions.

    hidden: [B, T, d] the state each input was drawn from; inputs: [B, T, d] what was fed; mask: [B, T].
    Returns float32 [B, T], 0 outside the mask, without [B, T, V] logits (see `over_positions`).
    """

    def score(h, x):  # [k, d], [k, d] -> [k]
        return isotropic_logdensity(x, topk_mixture(embed, head(h).float() / temperature, top_k), sigma)

    return over_positions(score, mask, (hidden, inputs), chunk or max(1, LOGITS_BUDGET // head.weight.shape[0]))


def isotropic_logdensity(x: torch.Tensor, mean: torch.Tensor, sigma: float) -> torch.Tensor:
    """log N(x; mean, sigma^2 I), float32, summed over the last dimension. [.., d] -> [..]."""
    d = x.shape[-1]
    log_norm = d * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    return -0.5 * ((x.float() - mean.float()) / sigma).pow(2).sum(-1) - log_norm


def over_positions(score, mask: torch.Tensor, tensors: tuple, chunk: int) -> torch.Tensor:
    """score(*rows) -> [k] on the `mask` [B, T] positions of each [B, T, ...] tensor, `chunk` positions at a time.

    With gradients and more than one chunk, each chunk is recomputed in the backward pass (checkpointed), so the
    peak is one chunk's logits rather than all of them: hundreds of thinking tokens of a large vocabulary.
    Returns float32 [B, T], 0 outside the mask.
    """
    picked = [t[mask] for t in tensors]  # each [K, ...]
    spans = [(start, start + chunk) for start in range(0, picked[0].shape[0], chunk)]
    recompute = torch.is_grad_enabled() and len(spans) > 1
    pieces = [
        checkpoint(score, *(p[a:b] for p in picked), use_reentrant=False)
        if recompute
        else score(*(p[a:b] for p in picked))
        for a, b in spans
    ]
    chosen = torch.cat(pieces) if pieces else picked[0].new_zeros(0, dtype=torch.float32)  # [K]
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, chosen.float())
