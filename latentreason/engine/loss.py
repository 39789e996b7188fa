"""Next-token cross-entropy with the output head run only where there is a label."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
