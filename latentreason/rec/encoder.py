"""SASRec's causal self-attention encoder over item ids, with the key/value cache latent reasoning reads.

Post-LayerNorm blocks as in RecBole's SASRec: x -> LN(x + drop(attn(x))) -> LN(h + drop(ffn(h))). Inputs are
item + position embeddings, LayerNorm, dropout. `encode` runs the history once and keeps every layer's keys
and values; `step` runs one new input per reasoning stream through the same layers, each stream attending to the
shared history (up to its anchor position) and to its own earlier steps only (the stream caches are
[B, H, A, M, t, dh]), so M streams from A anchors cost one batched call per step and never see each other.
Training reasons from every position at once (A = L, each predicting its next item, as SASRec trains);
ranking reasons from the last one (A = 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ContextCache:
    """The encoded history: per layer (keys, values) [B, H, L, dh]; `valid` [B, L] marks real items."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    valid: torch.Tensor


@dataclass
class StreamCache:
    """Per layer, the keys and values of every stream's earlier reasoning steps, [B, H, A, M, t, dh] each."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of num_heads {heads}")
        self.heads, self.head_dim = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """[..., n, d] -> q, k, v as [..., H, n, dh]."""
        *lead, n, _ = x.shape
        q, k, v = self.qkv(x).view(*lead, n, 3, self.heads, self.head_dim).unbind(-3)  # [..., n, H, dh] each
        return tuple(t.transpose(-3, -2) for t in (q, k, v))

    def history(self, x: torch.Tensor, valid: torch.Tensor):
        """x [B, L, d]: causal attention over real items. -> (out [B, L, d], (k, v) [B, H, L, dh])."""
        B, L, _ = x.shape
        q, k, v = self._split(x)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()  # [L, L]
        # A padding position may see itself, so its (unused) row never softmaxes over nothing.
        mask = causal & (valid[:, None, :] | torch.eye(L, dtype=torch.bool, device=x.device))  # [B, L, L]
        p = self.dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=p)  # [B, H, L, dh]
        return self.out(y.transpose(1, 2).reshape(B, L, -1)), (k, v)

    def stream_step(self, x: torch.Tensor, context: tuple, visible: torch.Tensor, own: tuple):
        """x [B, A, M, d]: one step of M streams from each of A anchor positions. Keys: the history's (context
        [B, H, L, dh], of which anchor a sees `visible` [B, A, L]) and the stream's own steps so far, this one
        included (own [B, H, A, M, t-1, dh] or None). -> (out [B, A, M, d], own keys and values with this step)."""
        B, A, M, _ = x.shape
        q, k, v = self._split(x.reshape(B, A * M, -1))  # [B, H, A*M, dh]
        q, k, v = (t.reshape(B, self.heads, A, M, 1, self.head_dim) for t in (q, k, v))
        if own[0] is not None:
            k, v = torch.cat([own[0], k], dim=4), torch.cat([own[1], v], dim=4)  # [B, H, A, M, t, dh]
        q = q.squeeze(4)  # [B, H, A, M, dh]
        ctx_k, ctx_v = context
        scale = self.head_dim**-0.5
        on_history = torch.einsum("bhamd,bhld->bhaml", q, ctx_k) * scale  # [B, H, A, M, L]
        on_history = on_history.masked_fill(~visible[:, None, :, None, :], float("-inf"))
        on_own = torch.einsum("bhamd,bhamtd->bhamt", q, k) * scale  # [B, H, A, M, t]
        weights = self.dropout(torch.softmax(torch.cat([on_history, on_own], dim=-1), dim=-1))
        L = ctx_k.shape[2]
        y = torch.einsum("bhaml,bhld->bhamd", weights[..., :L], ctx_v)  # [B, H, A, M, dh]
        y = y + torch.einsum("bhamt,bhamtd->bhamd", weights[..., L:], v)
        return self.out(y.permute(0, 2, 3, 1, 4).reshape(B, A, M, -1)), (k, v)


class Block(nn.Module):
    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.attention = Attention(hidden, heads, attention_dropout)
        self.norm1, self.norm2 = nn.LayerNorm(hidden, eps=1e-12), nn.LayerNorm(hidden, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.dropout = nn.Dropout(dropout)

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x + self.dropout(attended))
        return self.norm2(h + self.dropout(self.ffn(h)))


class SequenceEncoder(nn.Module):
    def __init__(
        self, num_items: int, max_len: int, hidden: int, layers: int, heads: int, inner: int, dropout: float,
        attention_dropout: float,
    ):  # fmt: skip
        super().__init__()
        self.items = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.positions = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, heads, inner, dropout, attention_dropout) for _ in range(layers))

    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(x))

    def encode(self, histories: torch.Tensor) -> tuple[torch.Tensor, ContextCache]:
        """histories [B, L] left-padded item ids -> (states [B, L, d], the cache reasoning attends to)."""
        valid = histories > 0  # [B, L]
        positions = torch.arange(histories.shape[1], device=histories.device)
        x = self.embed_input(self.items(histories) + self.positions(positions))  # [B, L, d]
        layers = []
        for block in self.blocks:
            attended, kv = block.attention.history(x, valid)
            x = block.finish(x, attended)
            layers.append(kv)
        return x, ContextCache(layers, valid)

    def step(self, inputs: torch.Tensor, context: ContextCache, anchors: torch.Tensor, streams: StreamCache):
        """One reasoning step of M streams from each anchor position (`anchors` [A] indexes the history; a stream
        sees the history up to its anchor): inputs [B, A, M, d] -> outputs [B, A, M, d]; `streams` grows."""
        x = self.embed_input(inputs)
        positions = torch.arange(context.valid.shape[1], device=inputs.device)
        visible = context.valid[:, None, :] & (positions[None, None, :] <= anchors[None, :, None])  # [B, A, L]
        if not streams.keys:
            streams.keys, streams.values = [None] * len(self.blocks), [None] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            own = (streams.keys[i], streams.values[i])
            attended, (streams.keys[i], streams.values[i]) = block.attention.stream_step(
                x, context.layers[i], visible, own
            )
            x = block.finish(x, attended)
        return x
