"""A solver for latent methods: the batched latent rollout, then the decoded answer."""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.engine.jacobi import jacobi_rollout
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.engine.sampling import Sampling, row_seeds
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
        sampling: Sampling | None = None,
        seed: int = 0,
    ):
        self.lm, self.thought_map, self.controller = lm, thought_map, controller
        self.max_latents, self.max_new_tokens, self.name = max_latents, max_new_tokens, name
        self.sampling, self.seed = sampling or Sampling(), seed

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm = self.lm
        out = self.rollout(self.prompts(problems), row_seeds(self.seed, [p.question for p in problems]))
        texts = lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        latents = out.num_latents.tolist()
        return [Solution(t, count_reasoning_tokens(lm.tokenizer, t), k) for t, k in zip(texts, latents)]

    def prompts(self, problems: list[Problem]) -> list[list[int]]:
        return [encode_problem(self.lm.tokenizer, p).prompt + [self.lm.bot_id] for p in problems]

    def rollout(self, prompts: list[list[int]], seeds=None):
        """The rollout of `prompts`; seeds: [B] row seeds for sampled answers (default: the row index)."""
        return latent_rollout(
            self.lm,
            prompts,
            self.thought_map,
            self.controller,
            self.max_latents,
            self.max_new_tokens,
            sampling=self.sampling,
            seeds=seeds,
        )


class JacobiSolver(LatentSolver):
    """A fixed number of thoughts found by `iterations` Jacobi updates (PCCoT) instead of one by one."""

    def __init__(self, lm, thought_map, num_latents: int, iterations: int, max_new_tokens: int = 64, name="jacobi"):
        super().__init__(lm, thought_map, fixed_latents(num_latents), num_latents, max_new_tokens, name)
        self.iterations = iterations

    def rollout(self, prompts: list[list[int]], seeds=None):
        return jacobi_rollout(
            self.lm,
            prompts,
            self.thought_map,
            self.max_latents,
            self.iterations,
            self.max_new_tokens,
            sampling=self.sampling,
            seeds=seeds,
        )
