"""Next-token cross-entropy with the output head run only where there is a label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from latentreason.engine.batch import IGNORE


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

    Only positions in `mask` go through the head, `chunk` at a time (default: as many as fit LOGITS_BUDGET).
    With gradients and more than one chunk, each chunk is recomputed in the backward pass (checkpointed), so
    the peak is one chunk's logits rather than all of them: hundreds of thinking tokens of a large vocabulary.
    hidden: [B, T, d]; tokens: [B, T], or [B, T, W] for W tokens per position whose log-probs are summed (one
    head call for all W); mask: [B, T]. Returns float32 [B, T], 0 outside the mask.
    """
    vocab = head.weight.shape[0]
    chunk = chunk or max(1, LOGITS_BUDGET // vocab)
    states, ids = hidden[mask], tokens[mask].reshape(int(mask.sum()), -1)  # [K, d], [K, W]
    spans = [(start, start + chunk) for start in range(0, ids.shape[0], chunk)]

    def score(h, target):  # [k, d], [k, W] -> [k]
        logits = head(h).float() / temperature  # [k, V]
        return logits.log_softmax(-1).gather(-1, target).sum(-1)  # as the sampler computes it

    recompute = torch.is_grad_enabled() and len(spans) > 1
    pieces = [
        checkpoint(score, states[a:b], ids[a:b], use_reentrant=False) if recompute else score(states[a:b], ids[a:b])
        for a, b in spans
    ]
    chosen = torch.cat(pieces) if pieces else states.new_zeros(0, dtype=torch.float32)  # [K]
    return torch.zeros(mask.shape, dtype=torch.float32, device=hidden.device).masked_scatter(mask, chosen)
