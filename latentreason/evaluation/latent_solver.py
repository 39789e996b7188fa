"""A solver for latent methods: the batched latent rollout, then the decoded answer."""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.engine.rollout import latent_rollout
from latentreason.evaluation.solvers import Solution, count_reasoning_tokens
from latentreason.layout import encode_problem


class LatentSolver:
    """question <bot> [thoughts] <eot> answer; `controller` decides each row's number of thoughts."""

    def __init__(
        self,
        lm,
        thought_map,
        controller,
        max_latents: int,
        max_new_tokens: int = 64,
        name: str = "latent",
        temperature: float = 0.0,
    ):
        self.lm, self.thought_map, self.controller = lm, thought_map, controller
        self.max_latents, self.max_new_tokens, self.name, self.temperature = (
            max_latents,
            max_new_tokens,
            name,
            temperature,
        )

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm = self.lm
        prompts = [encode_problem(lm.tokenizer, p).prompt + [lm.bot_id] for p in problems]
        out = latent_rollout(
            lm,
            prompts,
            self.thought_map,
            self.controller,
            self.max_latents,
            self.max_new_tokens,
            temperature=self.temperature,
        )
        texts = lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        latents = out.num_latents.tolist()
        return [Solution(t, count_reasoning_tokens(lm.tokenizer, t), k) for t, k in zip(texts, latents)]
