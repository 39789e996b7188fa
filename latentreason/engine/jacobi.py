"""Jacobi latent pass (PCCoT, Wu et al. 2025): every latent slot updated in parallel, T times.

Sequential latents cost one model call per slot because slot j's input is a function of the hidden
state just before it. Jacobi iteration feeds all N slots at once and refreshes every input from the
hidden states of that call:

    call 1       prefix + N <|latent|> tokens (the initial guesses) -> z^1 (from the hidden state before each slot)
    call t       z^(t-1) on the prefix cache, then dropped from the cache   -> z^t      (t = 2..T)
    last call    z^T with the suffix (training) or <eot> (rollout): what the answer sees

Slot j attends only to slots before it, so after t updates the first t inputs are exact: T = N gives
the sequential result, T < N is cheaper (T + 1 calls instead of N + 1, each over N slots) and
approximate. Slot 0's input comes from the prefix alone and is computed once. Masks and positions are
those of the sequential pass (rows with fewer latents mask their extra slots).
"""

from __future__ import annotations

import torch

from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode_from
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.latent_pass import LatentBatch, LatentPassOutput, ThoughtMap, finish_pass
from latentreason.engine.rollout import Rollout
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import Prefix


def map_slots(thought_map: ThoughtMap, hidden: torch.Tensor, first_slot: int) -> tuple[torch.Tensor, list]:
    """Inputs of slots first_slot.. from the hidden states before them. hidden: [B, M, d] -> [B, M, d]."""
    outs = [thought_map(hidden[:, i], first_slot + i) for i in range(hidden.shape[1])]
    return torch.stack([z for z, _ in outs], 1), [extra for _, extra in outs]


def jacobi_thoughts(
    lm, cache, prefix_ids, prefix_mask, slot_mask, thought_map: ThoughtMap, iterations: int, samples: int = 1
):
    """(hidden at <bot> [B*S, d], thoughts z^T [B*S, N, d], map extras [N]); `cache` then holds the prefix only.

    prefix_ids, prefix_mask: [B, P] left-padded, ending with <bot>; slot_mask: [B, N] (N >= 1). `samples` S:
    the first call (prefix and the initial guesses, the same for every sample) runs once per row, then its
    cache and states are repeated, so the samples of row i are rows i*S .. i*S + S-1 and part from the
    first thought map on (a noisy map draws per row).
    """
    n = slot_mask.shape[1]
    guesses = torch.full_like(prefix_ids[:, :1], lm.latent_id).expand(-1, n)  # [B, N] initial slot inputs
    mask = torch.cat([prefix_mask, slot_mask.long()], dim=1)  # [B, P+N]
    ids = torch.cat([prefix_ids, guesses], dim=1)
    hidden = forward_step(lm, cache, mask, input_ids=ids)[:, -n - 1 :]  # [B, 1+N, d] at <bot> and each slot
    if samples > 1:
        cache.batch_repeat_interleave(samples)
        hidden, mask = hidden.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)  # [B*S, ...]
    bot_hidden = hidden[:, 0]  # [B, d]
    thoughts, extras = map_slots(thought_map, hidden[:, :n], 0)  # [B, N, d]
    # After T updates the first T thoughts are exact: updates beyond N change nothing (N = 1 has none to make).
    for _ in range(min(iterations, n) - 1):
        cache.crop(-n)  # back to the prefix; the slots are recomputed from the new inputs
        hidden = forward_step(lm, cache, mask, inputs_embeds=thoughts.to(lm.embed.weight.dtype))  # [B, N, d]
        rest, rest_extras = map_slots(thought_map, hidden[:, :-1], 1)  # [B, N-1, d]
        thoughts = torch.cat([thoughts[:, :1], rest], dim=1)
        extras = extras[:1] + rest_extras
    cache.crop(-n)
    return bot_hidden, thoughts, extras


def jacobi_latent_forward(
    lm, batch: LatentBatch, thought_map: ThoughtMap, iterations: int, all_layers: bool = False, cache=None
) -> LatentPassOutput:
    """The teacher-forced latent pass with `iterations` Jacobi updates (equal to `latent_forward` when
    iterations >= the batch's most latents). `cache`: an empty cache to run on, for a caller that reads the
    keys and values afterwards (prefix, slots, suffix; KaVa matches the slots')."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    slot_mask = batch.slot_mask(batch.pass_slots())  # [B, N]
    cache = new_cache(lm) if cache is None else cache
    if slot_mask.shape[1] == 0:
        bot_hidden = forward_step(lm, cache, batch.prefix_mask, input_ids=batch.prefix_ids)[:, -1]  # [B, d]
        thoughts, extras = bot_hidden[:, None][:, :0], []
    else:
        bot_hidden, thoughts, extras = jacobi_thoughts(
            lm, cache, batch.prefix_ids, batch.prefix_mask, slot_mask, thought_map, iterations
        )
    latent_hidden, suffix_hidden, layers = finish_pass(
        lm, cache, batch.prefix_mask, thoughts, slot_mask, batch, all_layers
    )
    return LatentPassOutput(bot_hidden, thoughts, latent_hidden, slot_mask, suffix_hidden, extras, layers)


@torch.no_grad()
def jacobi_rollout(
    lm,
    prompts: list[list[int]],
    thought_map: ThoughtMap,
    num_latents: int,
    iterations: int,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    seeds: torch.Tensor | None = None,
    stop_ids: list[int] | None = None,
    samples: int = 1,
) -> Rollout:
    """`latent_rollout` with a fixed number of latents found by Jacobi iteration (prompts end with <bot>).
    `samples` S: rows i*S .. i*S + S-1 are S samples of prompt i sharing its prefill (`seeds`: [B*S])."""
    device = lm.device
    batch = left_pad(prompts, lm.pad_id)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)  # [B, P]
    bsz, dtype = ids.shape[0] * samples, lm.embed.weight.dtype
    cache = new_cache(lm)
    if num_latents:
        slot_mask = torch.ones((ids.shape[0], num_latents), dtype=torch.bool, device=device)
        _, thoughts, _ = jacobi_thoughts(lm, cache, ids, mask, slot_mask, thought_map, iterations, samples)
    else:
        forward_step(lm, cache, mask, input_ids=ids)
        if samples > 1:
            cache.batch_repeat_interleave(samples)
        thoughts = lm.embed.weight.new_zeros(bsz, 0, lm.embed.weight.shape[1])
    mask = mask.repeat_interleave(samples, 0)  # [B*S, P]
    # z^T and <eot> in one call; the answer continues from the same cache on the step engine.
    eot = torch.full((bsz, 1), lm.eot_id, dtype=torch.long, device=device)
    mask = torch.cat([mask, torch.ones((bsz, num_latents + 1), dtype=mask.dtype, device=device)], dim=1)
    embeds = torch.cat([thoughts.to(dtype), lm.embed(eot)], dim=1)  # [B, N+1, d]
    last = forward_step(lm, cache, mask, inputs_embeds=embeds)[:, -1]  # [B, d]
    out = decode_from(lm, Prefix(cache, mask, last), max_new_tokens, stop_ids or [lm.eos_id], sampling, seeds)
    used = torch.full((bsz,), num_latents, dtype=torch.long, device=device)
    return Rollout(out.tokens, out.lengths, used, thoughts, out.logprobs, trace=out.trace)
