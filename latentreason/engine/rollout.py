"""Latent rollout (inference, evaluation, RL): batched latent steps on a KV cache, then the answer.

    prefill  left-padded prompts ending with <bot>            (one call)
    latents  up to N single-slot calls; a controller stops rows; stopped rows' slots are masked
             (positions frozen); the loop exits as soon as every row has stopped
    answer   <eot> then token decoding continuing on the same cache (no second prefill)

Only one host sync per latent step (`all rows stopped?`), never a per-row `.item()`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode, forward_step, new_cache

# controller(step j, hidden [B, d] before the slot, thought input [B, d], extra) -> stop [B] bool:
# True means the row ends its latent phase before slot j (it uses j latents).
Controller = Callable[[int, torch.Tensor, torch.Tensor, object], torch.Tensor]


def fixed_latents(k: torch.Tensor | int) -> Controller:
    """Every row thinks exactly k latents (k may be a [B] tensor)."""

    def stop(j, hidden, z, extra):
        limit = k if torch.is_tensor(k) else torch.full((hidden.shape[0],), k, device=hidden.device)
        return j >= limit

    return stop


@dataclass
class Rollout:
    tokens: torch.Tensor  # [B, T] answer tokens after <eot>, pad after the stop token
    lengths: torch.Tensor  # [B] answer tokens generated (stop included)
    num_latents: torch.Tensor  # [B] latent slots each row used
    latent_inputs: torch.Tensor  # [B, N, d] thoughts fed (zeros where a row had stopped)
    extras: list  # [N] what the thought map returned per step
    token_logprobs: torch.Tensor | None = None  # [B, T] with return_logprobs: each answer token's log-prob


@torch.no_grad()
def latent_rollout(
    lm,
    prompts: list[list[int]],
    thought_map,
    controller: Controller,
    max_latents: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_ids: list[int] | None = None,
    return_logprobs: bool = False,
) -> Rollout:
    """Roll out a batch of prompts (each already ending with <bot>)."""
    device = lm.device
    batch = left_pad(prompts, lm.pad_id)
    mask = batch["attention_mask"].to(device)  # [B, P]
    bsz = mask.shape[0]
    cache = new_cache(lm)
    last = forward_step(lm, cache, mask, input_ids=batch["input_ids"].to(device))[:, -1]  # [B, d]
    active = torch.ones(bsz, dtype=torch.bool, device=device)  # [B]
    used = torch.zeros(bsz, dtype=torch.long, device=device)  # [B]
    thoughts, extras = [], []
    for j in range(max_latents):
        z, extra = thought_map(last, j)  # [B, d]
        active &= ~controller(j, last, z, extra)
        if not bool(active.any()):  # the one sync per step: every row has stopped
            break
        thoughts.append(z * active[:, None])
        extras.append(extra)
        used += active.long()
        mask = torch.cat([mask, active.long()[:, None]], dim=1)
        last = forward_step(lm, cache, mask, inputs_embeds=z[:, None].to(lm.embed.weight.dtype))[:, -1]
    eot = torch.full((bsz, 1), lm.eot_id, dtype=torch.long, device=device)  # [B, 1]
    mask = torch.cat([mask, torch.ones_like(eot)], dim=1)
    out = decode(
        lm,
        eot,
        mask,
        max_new_tokens,
        stop_ids or [lm.eos_id],
        cache=cache,
        temperature=temperature,
        generator=generator,
        return_logprobs=return_logprobs,
    )
    d = last.shape[-1]
    latent_inputs = torch.stack(thoughts, 1) if thoughts else last.new_zeros(bsz, 0, d)
    return Rollout(out.tokens, out.lengths, used, latent_inputs, extras, out.logprobs)
