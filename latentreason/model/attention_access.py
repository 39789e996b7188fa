"""Reading a backbone's attention internals: its attention probabilities, and its cached keys before RoPE.

Fast attention kernels (sdpa, flash) never build the probability matrix, so a call that needs it runs
under `eager_attention`. Cached keys of rotary models are rotated by their position; `unrotated_keys`
undoes that rotation, so two keys computed from the same content at different positions compare equal.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def eager_attention(model):
    """Run `model` (a transformers PreTrainedModel) with eager attention inside the block, then restore it."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The 90-degree turn of each (i, i + D/2) pair that rotary embeddings of the Llama family use."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def unrotated_keys(backbone, keys: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Cached keys [B, H, T, D] with the rotary rotation of their positions [B, T] undone.

    The cache holds k * cos + rotate_half(k) * sin (cos and sin may carry an attention scaling a);
    its inverse is (k * cos - rotate_half(k) * sin) / (cos^2 + sin^2). A backbone without a rotary
    embedding (GPT-2's learned positions enter the input, not the keys) returns the keys unchanged.
    Only the first `cos.shape[-1]` dimensions are rotated (partial rotary models).
    """
    rotary = getattr(backbone, "rotary_emb", None)
    if rotary is None:
        return keys
    cos, sin = rotary(keys, position_ids)  # [B, T, R] each
    cos, sin = cos[:, None].to(keys.dtype), sin[:, None].to(keys.dtype)  # [B, 1, T, R]
    turned, rest = keys[..., : cos.shape[-1]], keys[..., cos.shape[-1] :]
    plain = (turned * cos - _rotate_half(turned) * sin) / (cos * cos + sin * sin)
    return torch.cat([plain, rest], dim=-1)  # [B, H, T, D]
