"""Beam search over latent steps guided by LatentRM's step scores (LatentTTS describes it; its release lacks it).

Per question W beams; at every latent step each beam is expanded into E candidates, one thought each drawn
with the latent sampler (candidate row r draws with its own row seed, keyed by the slot), the RM scores
every candidate's prefix, and the W best of the W x E candidates survive. The KV cache follows the
choice: the survivors' rows are selected and repeated E times (`batch_select_indices`), so no prefix is
ever recomputed. After the last step the best beam feeds <eot> and decodes its answer greedily.

    step t   hidden [Q*C, d] -> thought z -> fed (cache grows) -> RM score of each prefix -> top W per question
             -> cache rows of the survivors, each repeated E times (C = W x E rows per question)
"""

from __future__ import annotations

from dataclasses import replace

import torch

from latentreason.engine.decode import decode_from
from latentreason.engine.forward import forward_step
from latentreason.engine.sampling import row_seeds
from latentreason.engine.steps import Prefix, prefill
from latentreason.evaluation.solvers import Solution, count_reasoning_tokens
from latentreason.tts.reward_model import LatentRM
from latentreason.tts.samplers import LatentSampler


@torch.no_grad()
def rm_beam_search(
    solver, rm: LatentRM, problems, sampler: LatentSampler, width: int, expansions: int, seed: int = 0
) -> list[Solution]:
    """One Solution per problem: its best beam after `solver.max_latents` thoughts, scored by its last step.
    `solver`: a LatentSolver (model, thought map, answer budget); every beam thinks exactly max_latents."""
    if width < 1 or expansions < 1 or solver.max_latents < 1:
        raise ValueError(
            f"rm_beam_search: width, expansions and the solver's max_latents must be at least 1, got {width}, "
            f"{expansions} and {solver.max_latents}"
        )
    lm, rows_per_q = solver.lm, width * expansions
    prompts = solver.prompts(problems)
    seeds = row_seeds(seed, [p.question for p in problems], rows_per_q)  # [Q x C]
    perturbation = sampler.bind(seeds)
    everyone = torch.arange(len(seeds), device=lm.device)
    row_prompts = [prompt for prompt in prompts for _ in range(rows_per_q)]
    with perturbation.attached(lm):
        prefix = prefill(lm, prompts, rows_per_q)
        cache, mask, hidden = prefix.cache, prefix.attention_mask, prefix.hidden
        history = hidden.new_zeros((len(seeds), 0, lm.embed.weight.shape[1]))  # [Q*C, t, d]
        for slot in range(solver.max_latents):
            z = perturbation.thought(solver.thought_map(hidden, slot)[0], everyone, slot)  # [Q*C, d]
            perturbation.before_forward(everyone, torch.ones_like(everyone, dtype=torch.bool), slot)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
            hidden = forward_step(lm, cache, mask, inputs_embeds=z[:, None].to(hidden.dtype))[:, -1]
            history = torch.cat([history, z[:, None].to(history.dtype)], 1)
            counts = torch.full((len(seeds),), slot + 1, device=lm.device)
            scores = rm.final_scores(row_prompts, history, counts).view(len(problems), rows_per_q)  # [Q, C]
            best = _top(scores, width)  # [Q, W] row indices within each question, best first
            keep = (best + torch.arange(len(problems), device=best.device)[:, None] * rows_per_q).flatten()
            keep = keep.to(lm.device).repeat_interleave(expansions)  # survivors, each E times: [Q*C]
            cache.batch_select_indices(keep)
            mask, hidden, history = mask[keep], hidden[keep], history[keep]
        final = scores.gather(1, best[:, :1]).squeeze(1)  # [Q]
    winners = torch.arange(len(problems), device=lm.device) * rows_per_q  # each question's best beam: row 0
    cache.batch_select_indices(winners)
    mask = torch.cat([mask[winners], mask.new_ones((len(problems), 1))], 1)
    eot = torch.full((len(problems), 1), lm.eot_id, device=lm.device)
    hidden = forward_step(lm, cache, mask, input_ids=eot)[:, -1]
    answer = decode_from(lm, Prefix(cache, mask, hidden), solver.max_new_tokens, [lm.eos_id])
    texts = lm.tokenizer.batch_decode(answer.tokens.cpu(), skip_special_tokens=True)
    return [
        Solution(text, count_reasoning_tokens(lm.tokenizer, text), solver.max_latents, score=float(score))
        for text, score in zip(texts, final.tolist())
    ]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """[Q, k] indices of each row's k highest scores, best first; ties go to the lower index (as best-of-N)."""
    ranked = [sorted(range(len(row)), key=lambda i, row=row: (-row[i], i))[:k] for row in scores.tolist()]
    return torch.tensor(ranked, device=scores.device)


class BeamSolver:
    """`rm_beam_search` as a solver the harness runs: one beam-searched answer per problem, carrying its score.
    With several `widths`, each problem is searched once per width; the widest answers it, and `Solution.beams`
    keeps every width's answer, from which the harness draws accuracy against the beam width."""

    def __init__(self, solver, rm: LatentRM, sampler: LatentSampler, widths, expansions: int, seed: int = 0):
        self.widths = sorted({widths} if isinstance(widths, int) else set(widths))
        if not self.widths or self.widths[0] < 1:
            raise ValueError(f"BeamSolver: widths must be at least 1, got {widths}")
        self.solver, self.rm, self.sampler = solver, rm, sampler
        self.expansions, self.seed = expansions, seed
        self.name = solver.name

    def solve(self, problems) -> list[Solution]:
        by_width = {
            width: rm_beam_search(self.solver, self.rm, problems, self.sampler, width, self.expansions, self.seed)
            for width in self.widths
        }
        widest = by_width[self.widths[-1]]
        if len(self.widths) == 1:
            return widest
        return [
            replace(solution, beams={width: answers[i] for width, answers in by_width.items()})
            for i, solution in enumerate(widest)
        ]
