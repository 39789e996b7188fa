"""Token decoding as a step-engine policy, greedy or sampled per row, continuing any cached prefix.

The text solvers use it from a prompt; latent solvers use `TokenPolicy` for their answer phase, so the
answer continues from the same cache without a second prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.sampling import RowSampling, Sampling, sample_tokens
from latentreason.engine.steps import TOKEN, Prefix, StepChoice, StepView, Trace, run_steps


class TokenPolicy:
    """Every step a sampled (or greedy) token; a row ends at a stop token or after `max_new_tokens`.

    sampling: one setting for all rows or a RowSampling [B]; seeds: [B] row seeds (see sampling.row_uniform).
    Each row's draws are keyed by its seed and its own token count, never by its batch."""

    row_state = ("sampling", "seeds", "generated", "limits")  # engine.slots

    def __init__(
        self,
        batch: int,
        device,
        stop_ids: list[int],
        max_new_tokens: int,
        sampling: Sampling | RowSampling | None = None,
        seeds: torch.Tensor | None = None,
    ):
        sampling = sampling or Sampling()
        self.sampling = sampling.rows(batch, device) if isinstance(sampling, Sampling) else sampling
        self.seeds = seeds.to(device) if seeds is not None else torch.arange(batch, device=device)
        self.stop = torch.tensor(stop_ids, device=device)
        self.max_new_tokens = max_new_tokens
        self.limits = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)  # [B] per row (slots)
        self.generated = torch.zeros(batch, dtype=torch.long, device=device)  # [B] tokens chosen so far

    def choose(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [b], log-probs [b], finished [b]) for the rows [b] whose logits [b, V] are given."""
        counters = self.generated[rows]
        ids, logprobs = sample_tokens(logits, self.sampling.take(rows), self.seeds[rows], counters)
        self.generated[rows] = counters + 1
        finished = torch.isin(ids, self.stop) | (counters + 1 >= self.limits[rows])
        return ids, logprobs, finished

    def step(self, view: StepView) -> StepChoice:
        ids, logprobs, finished = self.choose(view.logits, view.rows)
        return StepChoice(ids, logprobs=logprobs, finished=finished)


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, T] generated ids, pad after a row's stop token
    lengths: torch.Tensor  # [B] generated tokens per row, stop token included
    logprobs: torch.Tensor  # [B, T] log-prob of each generated token (0 after a row's stop)
    trace: Trace


def decode_from(
    lm,
    prefix: Prefix,
    max_new_tokens: int,
    stop_ids: list[int],
    sampling: Sampling | RowSampling | None = None,
    seeds: torch.Tensor | None = None,
    stats: bool = False,
) -> Decoded:
    """Generate up to `max_new_tokens` per row from a prefilled `prefix` (its rows in original order)."""
    batch = prefix.hidden.shape[0]
    policy = TokenPolicy(batch, prefix.hidden.device, stop_ids, max_new_tokens, sampling, seeds)
    trace = run_steps(lm, prefix, policy, max_new_tokens, batch_size=batch, stats=stats)
    tokens, logprobs, lengths = trace.packed(TOKEN, lm.pad_id)
    return Decoded(tokens, lengths, logprobs, trace)


@torch.no_grad()
def decode(
    lm,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    stop_ids: list[int],
    sampling: Sampling | RowSampling | None = None,
    seeds: torch.Tensor | None = None,
    cache=None,
) -> Decoded:
    """Prefill `input_ids` [B, L] and generate up to `max_new_tokens`.

    attention_mask: [B, past + L] over `cache` (when continuing one) and the new, left-padded tokens."""
    cache = cache if cache is not None else new_cache(lm)
    hidden = forward_step(lm, cache, attention_mask, input_ids=input_ids)[:, -1]  # [B, d]
    return decode_from(lm, Prefix(cache, attention_mask, hidden), max_new_tokens, stop_ids, sampling, seeds)
