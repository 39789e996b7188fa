"""LTA-Thinker's batches and solver: the prior reads the question and writes K thoughts, which fill the slots
of `question <bot> [K slots] <eot>` in the main model's prefill; the main model then decodes its reply.

The prior's input is right-padded and has no positions: K slots, the question's tokens and, in training, the
CoT steps' tokens. The slots and the question never attend to the steps, so the thoughts trained with the
steps in the batch are exactly the thoughts computed at evaluation without them; each step attends to the
slots, the question and its own tokens only. (Without positions, a block where every step sees every step
gives the same state to the same token in every step: the steps of a chain all end in '>>', and the InfoNCE
over their last tokens would be constant.)
"""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.engine.decode import decode_from
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.steps import Prefix
from latentreason.evaluation.solvers import SampledSolver, Solution, by_problem, count_reasoning_tokens
from latentreason.layout import encode_problem


def prior_batch(prompts: list[list[int]], steps: list[list[list[int]]], pad_id: int, num_slots: int) -> dict:
    """The prior's inputs for n = num_slots slots, each row its prompt's then its steps' tokens.

    prior_ids: [B, L] right-padded; prior_sees: [B, n+L, n+L] who may attend to whom (slots and question tokens
    see the slots and the question; a step's tokens see those and their own step); anchor_at: [B] the prompt's
    last token and step_ends: [B, S] each step's last token, as positions in the prior's output (after the n
    slots); step_mask: [B, S] which step_ends are real (S >= 1 so a batch without steps keeps its shapes)."""
    rows = [prompt + [t for step in row_steps for t in step] for prompt, row_steps in zip(prompts, steps)]
    width, most_steps = max(len(r) for r in rows), max(1, max(len(s) for s in steps))
    batch = len(rows)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)  # [B, L]
    # 0: a slot or question token, i: a token of step i, -1: padding.
    part = torch.full((batch, num_slots + width), -1, dtype=torch.long)  # [B, n+L]
    step_ends = torch.zeros(batch, most_steps, dtype=torch.long)  # [B, S]
    step_mask = torch.zeros(batch, most_steps, dtype=torch.bool)  # [B, S]
    for row, (tokens, prompt, row_steps) in enumerate(zip(rows, prompts, steps)):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        end = num_slots + len(prompt)
        part[row, :end] = 0
        for i, step in enumerate(row_steps):
            part[row, end : end + len(step)] = i + 1
            end += len(step)
            step_ends[row, i], step_mask[row, i] = end - 1, True
    keys, queries = part[:, None, :], part[:, :, None]  # [B, 1, n+L], [B, n+L, 1]
    sees = (keys == 0) | ((keys == queries) & (keys > 0))  # [B, n+L, n+L]
    anchor_at = torch.tensor([num_slots + len(p) - 1 for p in prompts])  # [B]
    return dict(prior_ids=ids, prior_sees=sees, anchor_at=anchor_at, step_ends=step_ends, step_mask=step_mask)


def main_batch(lm, prompts: list[list[int]], num_slots: int, replies: list[list[int]] | None = None) -> dict:
    """Left-padded `prompt <bot> [n slots] <eot> reply` rows (labels: the replies only)."""
    replies = replies or [[] for _ in prompts]
    heads = [prompt + [lm.bot_id] + [lm.latent_id] * num_slots + [lm.eot_id] for prompt in prompts]
    labels = [[IGNORE] * len(head) + reply for head, reply in zip(heads, replies)]
    return left_pad([head + reply for head, reply in zip(heads, replies)], lm.pad_id, labels)


def with_thoughts(lm, input_ids: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
    """Embeddings [B, L, d] of `input_ids` [B, L] with row b's n latent slots holding thoughts[b] [B, n, d]."""
    embeds = lm.embed(input_ids)  # [B, L, d]
    slots = (input_ids == lm.latent_id)[..., None]  # [B, L, 1]: n per row, filled in order
    return embeds.masked_scatter(slots, thoughts.to(embeds.dtype))  # out of place: keeps the graph


def prior_states(lm, prior, batch: dict, num_slots: int) -> torch.Tensor:
    """The prior's projected states [B, n + L, d] for a `prior_batch` (moved to the model's device)."""
    return prior(lm.embed(batch["prior_ids"]), batch["prior_sees"], num_slots)


class LTAThinkerSolver(SampledSolver):
    """`num_thoughts` thoughts from the prior, then the main model's reply, greedy unless `sampling` says."""

    def __init__(self, lm, prior, num_thoughts: int, max_new_tokens: int, name: str):
        self.lm, self.prior, self.num_thoughts = lm, prior, num_thoughts
        self.max_new_tokens, self.name = max_new_tokens, name
        self.configure()

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm, n, device = self.lm, self.num_thoughts, self.lm.device
        prompts = [encode_problem(lm.tokenizer, p).prompt for p in problems]
        prior_in = {k: v.to(device) for k, v in prior_batch(prompts, [[] for _ in prompts], lm.pad_id, n).items()}
        thoughts = prior_states(lm, self.prior, prior_in, n)[:, :n]  # [B, n, d]
        main = main_batch(lm, prompts, n)
        embeds = with_thoughts(lm, main["input_ids"].to(device), thoughts)  # [B, L, d]
        embeds = embeds.repeat_interleave(self.samples, 0)  # [B*M, L, d]: sample m of problem i at i x M + m
        mask = main["attention_mask"].to(device).repeat_interleave(self.samples, 0)  # [B*M, L]
        cache = new_cache(lm)
        hidden = forward_step(lm, cache, mask, inputs_embeds=embeds)[:, -1]  # [B*M, d]
        out = decode_from(
            lm, Prefix(cache, mask, hidden), self.max_new_tokens, [lm.eos_id], self.sampling, self.row_seeds(problems)
        )
        texts = lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        solutions = [Solution(t, count_reasoning_tokens(lm.tokenizer, t), n) for t in texts]
        return by_problem(solutions, self.samples)
