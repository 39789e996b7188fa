"""One call of the backbone on a KV cache, with positions derived from the attention mask."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from latentreason.engine.batch import positions_from_mask
from latentreason.engine.cache import inference_cache
from latentreason.engine.compat import cache_kwargs


def new_cache(lm) -> DynamicCache:
    """In-place cache when gradients are off (inference), concatenating cache when training."""
    if torch.is_grad_enabled():
        return DynamicCache(config=lm.model.config)
    return inference_cache(lm.model.config)


def forward_step(lm, cache, attention_mask, input_ids=None, inputs_embeds=None, all_layers: bool = False):
    """Run new tokens (ids or embeddings) through the backbone on `cache`; return their hidden states.

    attention_mask: [B, past + L] covering the cache and the new tokens, so positions are derived
    from it and left padding or masked (finished) steps never shift a row's positions.
    Returns [B, L, d], or with all_layers the tuple of every layer's [B, L, d] (embeddings first; the
    last one is the default return).
    """
    new_len = (input_ids if input_ids is not None else inputs_embeds).shape[1]
    position_ids = positions_from_mask(attention_mask)[:, -new_len:]  # [B, L]
    out = lm.backbone(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        **cache_kwargs(lm.backbone, cache),
        output_hidden_states=all_layers,
    )
    return out.hidden_states if all_layers else out.last_hidden_state  # [B, L, d]
