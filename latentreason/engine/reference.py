"""Slow, obviously-correct reference paths: one problem at a time, no cache, everything recomputed.

Tests compare the batched, cached engines against these; `latentreason bench engine` reports how
much faster the engines are.
"""

from __future__ import annotations

import torch


def _full_hidden(lm, embeds: torch.Tensor) -> torch.Tensor:
    """Hidden states of one unpadded sequence. embeds: [1, L, d] -> [1, L, d]."""
    positions = torch.arange(embeds.shape[1], device=embeds.device)[None]
    return lm.backbone(inputs_embeds=embeds, position_ids=positions, use_cache=False).last_hidden_state


def reference_latent_forward(lm, prefix: list[int], k: int, suffix: list[int], thought_map):
    """One row of the teacher-forced pass: (thoughts [k, d], suffix hidden [S, d])."""
    device = lm.device
    embeds = lm.embed(torch.tensor([prefix], device=device))  # [1, P, d]
    thoughts = []
    for j in range(k):
        z, _ = thought_map(_full_hidden(lm, embeds)[:, -1], j)  # [1, d]
        thoughts.append(z[0])
        embeds = torch.cat([embeds, z[:, None].to(embeds.dtype)], dim=1)
    embeds = torch.cat([embeds, lm.embed(torch.tensor([suffix], device=device))], dim=1)
    hidden = _full_hidden(lm, embeds)[0]  # [P + k + S, d]
    empty = hidden.new_zeros(0, hidden.shape[-1])
    return (torch.stack(thoughts) if thoughts else empty), hidden[len(prefix) + k :]


@torch.no_grad()
def reference_rollout(lm, prompt: list[int], k: int, thought_map, max_new_tokens: int, stop_ids: list[int]):
    """One row of the rollout with k latents then greedy answer decoding: (thoughts [k, d], answer ids)."""
    thoughts, _ = reference_latent_forward(lm, prompt, k, [lm.eot_id], thought_map)
    device = lm.device
    embeds = torch.cat(
        [
            lm.embed(torch.tensor([prompt], device=device)),
            thoughts[None].to(lm.embed.weight.dtype),
            lm.embed(torch.tensor([[lm.eot_id]], device=device)),
        ],
        dim=1,
    )
    answer = []
    for _ in range(max_new_tokens):
        token = int(lm.lm_head(_full_hidden(lm, embeds)[:, -1]).argmax(-1))
        answer.append(token)
        if token in stop_ids:
            break
        embeds = torch.cat([embeds, lm.embed(torch.tensor([[token]], device=device))], dim=1)
    return thoughts, answer
