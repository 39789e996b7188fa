"""Teacher-forced latent pass (training): `prefix <bot> [latent]*k suffix`, k per row.

The input at latent slot j is the thought map of the hidden state one position earlier, so the
slots must be computed one after another. Each position is computed exactly once on a KV cache:

    call 0        prefix (left-padded, ends with <bot>)      -> hidden at <bot> -> input of slot 0
    call 1..N-1   one latent slot each                       -> input of the next slot
    call N        the last latent slot + the whole suffix    -> hidden states for the loss

N + 1 calls for N = max k in the batch. A row with k < N has its slots k..N-1 masked out of attention
and, because positions are counted from the mask, its suffix keeps the positions it would have alone:
rows with different k share one batch and give the same result as one at a time.

Under a model sharded per layer (engine/lockstep.py) N is the longest thought over every process: a
process whose rows all think less runs the extra slots masked, exactly as a shorter row does, so every
process builds the same graph and makes the same per-layer collectives in the same order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from latentreason.engine.batch import IGNORE, positions_from_mask
from latentreason.engine.cache import training_cache
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.lockstep import agreed_max


@dataclass
class LatentBatch:
    prefix_ids: torch.Tensor  # [B, P] left-padded question + <bot>
    prefix_mask: torch.Tensor  # [B, P]
    num_latents: torch.Tensor  # [B] latent slots used by each row (0..N)
    suffix_ids: torch.Tensor  # [B, S] right-padded <eot> + remaining text + answer
    suffix_mask: torch.Tensor  # [B, S]
    suffix_labels: torch.Tensor  # [B, S] IGNORE where nothing is predicted
    extras: dict = field(default_factory=dict)  # method-specific tensors (step targets, ...)

    def to(self, device) -> LatentBatch:
        moved = {k: v.to(device) for k, v in self.__dict__.items() if torch.is_tensor(v)}
        extras = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.extras.items()}
        return LatentBatch(**moved, extras=extras)

    @property
    def num_tokens(self) -> int:
        return int(self.prefix_mask.sum() + self.suffix_mask.sum() + self.num_latents.sum())

    @property
    def max_latents(self) -> int:
        return int(self.num_latents.max()) if self.num_latents.numel() else 0

    def pass_slots(self) -> int:
        """The latent slots a pass runs: the batch's longest thought, or inside `lockstep` the longest over
        the processes (a collective)."""
        return agreed_max(self.max_latents)

    def slot_mask(self, slots: int | None = None) -> torch.Tensor:
        """[B, N] True where latent slot j is used by its row (N = `slots`, default the batch's longest)."""
        n = self.max_latents if slots is None else slots
        return torch.arange(n, device=self.num_latents.device)[None] < self.num_latents[:, None]


def build_latent_batch(
    prefixes: list[list[int]],
    num_latents: list[int],
    suffixes: list[list[int]],
    suffix_labels: list[list[int]],
    pad_id: int,
) -> LatentBatch:
    """Pad prefixes on the left (so slot columns align) and suffixes on the right."""
    batch = len(prefixes)
    p_len = max(len(p) for p in prefixes)
    s_len = max(len(s) for s in suffixes)
    prefix_ids = torch.full((batch, p_len), pad_id, dtype=torch.long)  # [B, P]
    prefix_mask = torch.zeros((batch, p_len), dtype=torch.long)  # [B, P]
    suffix_ids = torch.full((batch, s_len), pad_id, dtype=torch.long)  # [B, S]
    suffix_mask = torch.zeros((batch, s_len), dtype=torch.long)  # [B, S]
    labels = torch.full((batch, s_len), IGNORE, dtype=torch.long)  # [B, S]
    for row in range(batch):
        p, s = prefixes[row], suffixes[row]
        prefix_ids[row, p_len - len(p) :] = torch.tensor(p)
        prefix_mask[row, p_len - len(p) :] = 1
        suffix_ids[row, : len(s)] = torch.tensor(s)
        suffix_mask[row, : len(s)] = 1
        labels[row, : len(s)] = torch.tensor(suffix_labels[row])
    return LatentBatch(
        prefix_ids, prefix_mask, torch.tensor(num_latents, dtype=torch.long), suffix_ids, suffix_mask, labels
    )


@dataclass
class LatentPassOutput:
    bot_hidden: torch.Tensor  # [B, d] hidden state at <bot> (what the first thought is made from)
    latent_inputs: torch.Tensor  # [B, N, d] what was fed at each slot (the thoughts)
    latent_hidden: torch.Tensor  # [B, N, d] hidden state at each slot
    slot_mask: torch.Tensor  # [B, N] True where the slot is used by its row
    suffix_hidden: torch.Tensor  # [B, S, d] hidden states over the suffix
    map_outputs: list  # [N] whatever the thought map returned besides the input (e.g. mean, logvar)
    suffix_layers: tuple | None = None  # with all_layers: every layer's [B, S, d] over the suffix, embeddings first


ThoughtMap = Callable[[torch.Tensor, int], tuple[torch.Tensor, object]]


def latent_forward(lm, batch: LatentBatch, thought_map: ThoughtMap, all_layers: bool = False) -> LatentPassOutput:
    """Run the teacher-forced latent pass.

    thought_map(hidden [B, d], slot j) -> (input embedding [B, d], extra): identity for Coconut,
    a projector for CODI, a Gaussian head for ATP-Latent (extra = its mean and log-variance).
    all_layers: also return every layer's hidden states over the suffix (for distillation).
    """
    n = batch.pass_slots()
    slot_mask = batch.slot_mask(n)  # [B, N]
    total = batch.prefix_ids.shape[1] + n + batch.suffix_ids.shape[1]
    cache = training_cache(lm.model.config, total) if torch.is_grad_enabled() else new_cache(lm)
    mask = batch.prefix_mask
    last = forward_step(lm, cache, mask, input_ids=batch.prefix_ids)[:, -1]  # [B, d] hidden at <bot>
    bot_hidden = last
    inputs, hiddens, extras = [], [], []
    for j in range(n):
        with random_streams_kept(last, j >= batch.max_latents):
            z, extra = thought_map(last, j)  # [B, d]
            inputs.append(z)
            extras.append(extra)
            if j < n - 1:
                mask = torch.cat([mask, slot_mask[:, j : j + 1].long()], dim=1)
                last = forward_step(lm, cache, mask, inputs_embeds=z[:, None])[:, -1]  # [B, d]
                hiddens.append(last)
    thoughts = torch.stack(inputs, 1) if inputs else bot_hidden[:, None][:, :0]  # [B, N, d]
    # The last slot rides along with the suffix: one call instead of two.
    pending = slice(n - 1, n) if n else slice(0, 0)
    last_hidden, suffix_hidden, layers = finish_pass(
        lm, cache, mask, thoughts[:, pending], slot_mask[:, pending], batch, all_layers
    )
    return LatentPassOutput(
        bot_hidden=bot_hidden,
        latent_inputs=thoughts,
        latent_hidden=torch.cat([torch.stack(hiddens, 1), last_hidden], 1) if hiddens else last_hidden,
        slot_mask=slot_mask,
        suffix_hidden=suffix_hidden,
        map_outputs=extras,
        suffix_layers=layers,
    )


def known_latent_forward(lm, batch: LatentBatch, thoughts: torch.Tensor) -> LatentPassOutput:
    """The teacher-forced latent pass when every slot's input is known beforehand (RL recomputing the
    thoughts a rollout drew): prefix, thoughts and suffix in one call instead of N + 1.

    thoughts: [B, R, d] with R >= the batch's longest thought; slot j of a row gets thoughts[:, j] where the
    row uses it (masked elsewhere). Equal to `latent_forward` with a map that feeds them, because a slot's
    input no longer depends on the state before it; one call also gathers a sharded model's weights once.
    """
    n = batch.max_latents
    slot_mask = batch.slot_mask(n)  # [B, N]
    prefix_len = batch.prefix_ids.shape[1]
    prefix_embeds, suffix_embeds = lm.embed(batch.prefix_ids), lm.embed(batch.suffix_ids)  # [B, P, d], [B, S, d]
    fed = thoughts[:, :n].to(prefix_embeds.dtype)  # [B, N, d]
    embeds = torch.cat([prefix_embeds, fed, suffix_embeds], dim=1)  # [B, P+N+S, d]
    mask = torch.cat([batch.prefix_mask, slot_mask.long(), batch.suffix_mask], dim=1)  # [B, P+N+S]
    hidden = lm.backbone(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
    ).last_hidden_state  # [B, P+N+S, d]
    return LatentPassOutput(
        bot_hidden=hidden[:, prefix_len - 1],
        latent_inputs=fed,
        latent_hidden=hidden[:, prefix_len : prefix_len + n],
        slot_mask=slot_mask,
        suffix_hidden=hidden[:, prefix_len + n :],
        map_outputs=[],
    )


def random_streams_kept(like: torch.Tensor, keep: bool):
    """Around a slot that only other processes' rows use (lockstep): it draws nothing from the random
    streams (ATP samples its thoughts, dropout), so the draws that follow are those of a process that did
    not run it, and a run matches DDP whatever the other processes' batches hold."""
    if not keep:
        return contextlib.nullcontext()
    return torch.random.fork_rng(devices=[like.device] if like.device.type == "cuda" else [])


def finish_pass(lm, cache, mask, pending, pending_mask, batch: LatentBatch, all_layers: bool = False):
    """The last call of a latent pass: slot inputs not yet in the cache, then the whole suffix.

    mask: [B, past] over what the cache holds; pending: [B, m, d] (m may be 0); pending_mask: [B, m].
    Returns (hidden at the pending slots [B, m, d], suffix hidden [B, S, d], per-layer suffix states or None).
    """
    suffix_embeds = lm.embed(batch.suffix_ids)  # [B, S, d]
    embeds = torch.cat([pending.to(suffix_embeds.dtype), suffix_embeds], dim=1)  # [B, m+S, d]
    mask = torch.cat([mask, pending_mask.long(), batch.suffix_mask], dim=1)
    m = pending.shape[1]
    out = forward_step(lm, cache, mask, inputs_embeds=embeds, all_layers=all_layers)
    hidden = out[-1] if all_layers else out  # [B, m+S, d]
    layers = tuple(h[:, m:] for h in out) if all_layers else None
    return hidden[:, :m], hidden[:, m:], layers
