"""LTA-Thinker's learnable prior (arXiv 2509.12875): one randomly initialised transformer block and a Linear
over the main model's input embeddings, which write K latent thoughts for the main model.

The block is the reference's: post-norm self-attention and a ReLU feed-forward, each followed by RMSNorm, no
positional encoding and no causal mask (every position sees every other it may see). Its input is K slot
vectors followed by the question's token embeddings (and, in training only, the CoT steps'); its outputs at
the slots, through the Linear, are the thoughts. The slot vectors are trained parameters: the reference feeds
K distinct reserved-token embeddings of the frozen main model instead, which never train.
"""

from __future__ import annotations

import torch
from torch import nn


def feed_forward_size(config) -> int:
    """The main model's MLP width (the reference sizes the block's feed-forward like it)."""
    return getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size


def norm_eps(config) -> float:
    return getattr(config, "rms_norm_eps", None) or getattr(config, "layer_norm_epsilon", None) or 1e-6


class LatentPrior(nn.Module):
    """Slots [K, d] + block + projection; `forward` maps [B, L, d] token embeddings to [B, K + L, d] states."""

    def __init__(self, hidden_size: int, num_slots: int, num_heads: int, ffn_size: int, dropout: float, eps: float):
        super().__init__()
        self.slots = nn.Parameter(torch.zeros(num_slots, hidden_size))
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.attention_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, ffn_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_size, hidden_size),
        )
        self.dropout = nn.Dropout(dropout)
        self.feed_forward_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.projection = nn.Linear(hidden_size, hidden_size)

    @classmethod
    def for_model(cls, base, num_slots: int, num_heads: int = 1, ffn_size: int = 0, dropout: float = 0.0):
        """A prior sized for `base` (a PreTrainedModel), its slots started from K spread-out vocabulary rows and
        its projection scaled so the thoughts start at the size of the model's token embeddings."""
        config = base.config
        ffn = ffn_size or feed_forward_size(config)
        prior = cls(config.hidden_size, num_slots, num_heads, ffn, dropout, norm_eps(config))
        rows = base.get_input_embeddings().weight.detach().float()  # [V, d]
        with torch.no_grad():
            picked = torch.linspace(0, rows.shape[0] - 1, num_slots).long()
            prior.slots.copy_(rows[picked])
            # The block's output has unit RMS (its last op is an RMSNorm): scale d inputs to the embeddings' RMS.
            scale = rows.pow(2).mean().sqrt() / config.hidden_size**0.5
            prior.projection.weight.normal_(0.0, float(scale))
            prior.projection.bias.zero_()
        return prior

    @property
    def num_slots(self) -> int:
        return self.slots.shape[0]

    def forward(self, embeds: torch.Tensor, sees: torch.Tensor, num_slots: int | None = None) -> torch.Tensor:
        """Projected states [B, n + L, d] of the first n slots (default all) followed by `embeds` [B, L, d].

        sees: [B, n + L, n + L] bool, True where query position i may attend to key position j (a position
        that sees nothing at all, a pad, is let see itself so attention stays finite)."""
        n = self.num_slots if num_slots is None else num_slots
        slots = self.slots[:n].to(embeds.dtype).expand(embeds.shape[0], -1, -1)  # [B, n, d]
        x = torch.cat([slots, embeds], dim=1)  # [B, n+L, d]
        width = x.shape[1]
        sees = sees | torch.eye(width, dtype=torch.bool, device=x.device)  # [B, n+L, n+L]
        blocked = (~sees).repeat_interleave(self.attention.num_heads, 0)  # [B*heads, n+L, n+L]
        attended = self.attention(x, x, x, attn_mask=blocked, need_weights=False)[0]  # [B, n+L, d]
        x = self.attention_norm(x + self.dropout(attended))
        x = self.feed_forward_norm(x + self.dropout(self.feed_forward(x)))
        return self.projection(x)  # [B, n+L, d]
