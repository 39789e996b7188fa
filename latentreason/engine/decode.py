"""Batched token decoding on a KV cache, greedy or sampled, continuing any cached prefix.

The text solvers use it from a prompt; latent solvers call it after their latent steps so the
answer continues from the same cache without a second prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from latentreason.engine.batch import positions_from_mask
from latentreason.engine.cache import inference_cache
from latentreason.engine.compat import cache_kwargs


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, T] generated ids, pad after a row's stop token
    lengths: torch.Tensor  # [B] generated tokens per row, stop token included
    cache: DynamicCache
    attention_mask: torch.Tensor  # [B, S] mask over what the cache holds (the last generated token is not fed)
    logprobs: torch.Tensor | None = None  # [B, T] log-prob of each generated token (0 after a row's stop)


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


@torch.no_grad()
def decode(
    lm,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: list[int],
    cache: DynamicCache | None = None,
    last_hidden: torch.Tensor | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    return_logprobs: bool = False,
) -> Decoded:
    """Generate up to `max_new_tokens` per row.

    input_ids: [B, L] new tokens to prefill (may be [B, 0] when `last_hidden` is given).
    attention_mask: [B, past + L] for the cache plus the new tokens.
    last_hidden: [B, d] hidden state predicting the first token, when the caller already has it.
    temperature 0 is greedy; otherwise sampling from softmax(logits / temperature).
    return_logprobs: also return each chosen token's log-prob under the distribution it was drawn
    from (softmax(logits / temperature); plain softmax when greedy), as RL needs.
    """
    cache = cache if cache is not None else new_cache(lm)
    if input_ids.shape[1] > 0:
        last_hidden = forward_step(lm, cache, attention_mask, input_ids=input_ids)[:, -1]  # [B, d]
    batch = attention_mask.shape[0]
    device = attention_mask.device
    stop = torch.tensor(stop_ids, device=device)
    tokens = torch.full((batch, max_new_tokens), lm.pad_id, dtype=torch.long, device=device)  # [B, T]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # [B]
    lengths = torch.zeros(batch, dtype=torch.long, device=device)  # [B]
    logprobs = torch.zeros((batch, max_new_tokens), device=device) if return_logprobs else None  # [B, T]
    t = -1  # the last step taken: none when max_new_tokens is 0
    for t in range(max_new_tokens):
        logits = lm.lm_head(last_hidden).float()  # [B, V]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # [B]
        else:
            next_ids = logits.argmax(-1)  # [B]
        if logprobs is not None:
            scaled = logits / temperature if temperature > 0 else logits
            chosen = scaled.log_softmax(-1).gather(-1, next_ids[:, None]).squeeze(-1)  # [B]
            logprobs[:, t] = torch.where(finished, 0.0, chosen)
        next_ids = torch.where(finished, lm.pad_id, next_ids)
        tokens[:, t] = next_ids
        lengths += (~finished).long()
        finished |= torch.isin(next_ids, stop)
        if t == max_new_tokens - 1 or bool(finished.all()):  # one sync per step for the whole batch
            break
        # Finished rows keep running (batch shape is fixed) but their new slot is masked out.
        attention_mask = torch.cat([attention_mask, (~finished).long()[:, None]], dim=1)
        last_hidden = forward_step(lm, cache, attention_mask, input_ids=next_ids[:, None])[:, -1]
    kept = logprobs[:, : t + 1] if logprobs is not None else None
    return Decoded(tokens[:, : t + 1], lengths, cache, attention_mask, kept)
