"""Latent rollout (inference, evaluation, RL) as a step-engine policy: latent steps, then the answer.

    prefix   left-padded prompts ending with <bot>           (one call)
    latents  each row feeds thoughts from the thought map until its controller stops it (or max_latents)
    <eot>    forced at the step a row stops; the row then decodes its answer on the same cache
A row that stops early starts its answer while others still think; a row whose answer ends leaves the
batch. Each row's own sequence is exactly the one it would have alone.

A `LatentPerturbation` (a latent sampler, latentreason.tts) may change each thought before it is fed and act
inside the forward calls that feed thoughts; the answer phase is never touched by it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentreason.engine.decode import TokenPolicy
from latentreason.engine.perturbation import LatentPerturbation
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import TOKEN, StepChoice, StepView, Trace, prefill, run_steps

# controller(step j, hidden [b, d] before the slot, thought input [b, d], extra, rows [b]) -> stop [b] bool:
# True means the row ends its latent phase before slot j (it uses j latents). rows: the rows' original indices.
Controller = Callable[[int, torch.Tensor, torch.Tensor, object, torch.Tensor], torch.Tensor]


def fixed_latents(k: torch.Tensor | int) -> Controller:
    """Every row thinks exactly k latents (k may be a [B] tensor over the original rows)."""

    def stop(j, hidden, z, extra, rows):
        limit = k.to(rows.device)[rows] if torch.is_tensor(k) else torch.full_like(rows, k)  # [b]
        return j >= limit

    return stop


@dataclass
class Rollout:
    tokens: torch.Tensor  # [B, T] answer tokens after <eot>, pad after the stop token
    lengths: torch.Tensor  # [B] answer tokens generated (stop token included)
    num_latents: torch.Tensor  # [B] latent slots each row used
    latent_inputs: torch.Tensor  # [B, N, d] thoughts fed (zeros beyond a row's latents)
    token_logprobs: torch.Tensor | None = None  # [B, T] each answer token's log-prob
    drawn: torch.Tensor | None = None  # [B, R, d] every thought the map produced (also where the row then stopped)
    trace: Trace | None = None  # per step: the latents (EMBED), <eot> (FORCED), the answer (TOKEN)


# on_thought(rows [n], slot j, hidden [n, d] before the slot, z [n, d], extra): sees every thought the map
# draws, with the rows' original indices (RL records what its actions were drawn from).
ThoughtHook = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor, object], None]


class LatentThenAnswer:
    """The step policy of `latent_rollout`; per-row state in [B] tensors. A row's next latent slot is the
    number of thoughts it has fed, so rows may join a running batch (engine.slots) and stay at their own slot."""

    row_state = ("thinking", "used", "drawn", "answer", "limits")  # engine.slots
    started_together = True  # every thinking row is at one slot (set False when rows join mid-flight)

    def __init__(
        self,
        lm,
        thought_map,
        controller: Controller,
        max_latents: int,
        answer: TokenPolicy,
        batch: int,
        on_thought: ThoughtHook | None = None,
        perturbation: LatentPerturbation | None = None,
    ):
        self.lm, self.thought_map, self.controller, self.answer = lm, thought_map, controller, answer
        self.max_latents, self.on_thought = max_latents, on_thought
        self.perturbation = perturbation or LatentPerturbation()
        device, d = lm.device, lm.embed.weight.shape[1]
        self.thinking = torch.ones(batch, dtype=torch.bool, device=device)  # [B] still in the latent phase
        self.used = torch.zeros(batch, dtype=torch.long, device=device)  # [B] latents fed
        self.drawn = lm.embed.weight.new_zeros((batch, max_latents, d))  # [B, N, d]
        self.slots = 0  # thought-map calls so far (= the widest row's drawn slots)
        self.limits = torch.full((batch,), max_latents, dtype=torch.long, device=device)  # [B] latents at most

    def step(self, view: StepView) -> StepChoice:
        b, device = view.rows.shape[0], view.hidden.device
        tokens = torch.full((b,), self.lm.pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(b, device=device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        forced = torch.zeros(b, dtype=torch.bool, device=device)
        embeds, is_embed = None, None
        thinking = self.thinking[view.rows]  # [b]
        think_at = thinking.nonzero().squeeze(1)  # [n]
        if think_at.numel():
            # Rows that started together are all at slot t; rows that joined a running batch later are not.
            if self.started_together:
                groups = [(think_at, view.t)]
            else:
                slots = self.used[view.rows[think_at]]  # [n] each thinking row's next slot
                groups = [(think_at[slots == j], int(j)) for j in slots.unique()]
            if any(j < self.max_latents for _, j in groups):  # some row feeds a thought
                embeds = view.hidden.new_zeros(view.hidden.shape)  # [b, d]
                is_embed = torch.zeros(b, dtype=torch.bool, device=device)
            for at, j in groups:
                self.think(view, at, j, embeds, is_embed, tokens, forced)
            finished[think_at] = forced[think_at] & (self.answer.max_new_tokens <= 0)
        answer_at = (~thinking).nonzero().squeeze(1)  # [m]
        if answer_at.numel():
            logits = self.lm.lm_head(view.hidden[answer_at]).float()  # [m, V]
            ids, lp, done = self.answer.choose(logits, view.rows[answer_at])
            tokens[answer_at], logprobs[answer_at], finished[answer_at] = ids, lp, done
        return StepChoice(tokens, embeds, is_embed, logprobs, finished, forced)

    def think(self, view: StepView, at: torch.Tensor, j: int, embeds, is_embed, tokens, forced) -> None:
        """Slot j of the thinking rows at positions `at` [n] of the view: a thought, or the stop (<eot> forced)."""
        rows, hidden = view.rows[at], view.hidden[at]  # [n], [n, d]
        if j >= self.max_latents:
            stop = torch.ones(rows.shape[0], dtype=torch.bool, device=hidden.device)
        else:
            z, extra = self.thought_map(hidden, j)  # [n, d]
            z = self.perturbation.thought(z, rows, j)
            stop = self.controller(j, hidden, z, extra, rows) | (j >= self.limits[rows])
            self.drawn[rows, j] = z.to(self.drawn.dtype)
            if self.on_thought is not None:
                self.on_thought(rows, j, hidden, z, extra)
            self.slots = max(self.slots, j + 1)
            embeds[at] = z.to(embeds.dtype)
            is_embed[at] = ~stop
        self.used[rows] += (~stop).long()
        self.thinking[rows] = ~stop
        tokens[at] = torch.where(stop, self.lm.eot_id, self.lm.pad_id)
        forced[at] = stop

    def before_feed(self, rows: torch.Tensor, t: int) -> None:
        """The engine's on_feed: a row still thinking after step t feeds thought t."""
        self.perturbation.before_forward(rows, self.thinking[rows], t)


@torch.no_grad()
def latent_rollout(
    lm,
    prompts: list[list[int]],
    thought_map,
    controller: Controller,
    max_latents: int,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    seeds: torch.Tensor | None = None,
    stop_ids: list[int] | None = None,
    samples: int = 1,
    on_thought: ThoughtHook | None = None,
    perturbation: LatentPerturbation | None = None,
) -> Rollout:
    """Roll out a batch of prompts (each already ending with <bot>); with `samples` > 1 each prompt's rows
    (i x samples + s) share one prefill. `perturbation` acts on the latent steps only (its hooks, if any, are
    attached for this call)."""
    perturbation = perturbation or LatentPerturbation()
    with perturbation.attached(lm):
        prefix = prefill(lm, prompts, samples)
        batch, device = prefix.hidden.shape[0], prefix.hidden.device
        answer = TokenPolicy(batch, device, stop_ids or [lm.eos_id], max_new_tokens, sampling, seeds)
        policy = LatentThenAnswer(lm, thought_map, controller, max_latents, answer, batch, on_thought, perturbation)
        steps = max_latents + 1 + max_new_tokens
        trace = run_steps(lm, prefix, policy, steps, batch_size=batch, on_feed=policy.before_feed)
    tokens, logprobs, lengths = trace.packed(TOKEN, lm.pad_id)
    n, r = int(policy.used.max()) if batch else 0, policy.slots
    inputs = policy.drawn[:, :n] * (torch.arange(n, device=device)[None] < policy.used[:, None])[..., None]
    return Rollout(tokens, lengths, policy.used, inputs, logprobs, policy.drawn[:, :r], trace)
