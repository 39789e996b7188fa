"""A solver for latent methods: the batched latent rollout, then the decoded answer; N samples per problem
from one shared prefill, their thoughts made diverse by a latent sampler (latentreason.tts)."""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.engine.jacobi import jacobi_rollout
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.engine.sampling import Sampling
from latentreason.errors import ConfigError
from latentreason.evaluation.solvers import SampledSolver, Solution, by_problem, count_reasoning_tokens
from latentreason.layout import encode_problem


class LatentSolver(SampledSolver):
    """question <bot> [thoughts] <eot> answer; `controller` decides each row's number of thoughts."""

    latent_samplers = ("noise", "dropout")  # the samplers its rollout can apply

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
        self.reward_model = None  # a tts.LatentRM: when set, it rates every sample (Solution.score) for best-of-N
        self.configure(sampling, seed)

    def configure(self, sampling: Sampling | None = None, seed: int = 0, samples: int = 1, latent_sampler=None):
        """Answer tokens drawn by `sampling`, thoughts perturbed by `latent_sampler` (a tts.LatentSampler with its
        settings complete), `samples` rows per problem."""
        super().configure(sampling, seed, samples)
        if latent_sampler is not None and latent_sampler.name not in self.latent_samplers:
            raise ConfigError(
                f"latent sampler '{latent_sampler.name}': not available for {self.name} "
                f"(available: {', '.join(self.latent_samplers)})"
            )
        self.latent_sampler = latent_sampler

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm, prompts = self.lm, self.prompts(problems)
        out = self.rollout(prompts, self.row_seeds(problems))
        texts = lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        latents, scores = out.num_latents.tolist(), self.scores(prompts, out)
        solutions = [
            Solution(t, count_reasoning_tokens(lm.tokenizer, t), k, score=s) for t, k, s in zip(texts, latents, scores)
        ]
        return by_problem(solutions, self.samples)

    def scores(self, prompts: list[list[int]], out) -> list[float | None]:
        """Each row's final-step score by the reward model (None for every row without one)."""
        if self.reward_model is None:
            return [None] * out.tokens.shape[0]
        rows = [prompt for prompt in prompts for _ in range(self.samples)]
        return self.reward_model.final_scores(rows, out.latent_inputs, out.num_latents).tolist()

    def prompts(self, problems: list[Problem]) -> list[list[int]]:
        return [encode_problem(self.lm.tokenizer, p).prompt + [self.lm.bot_id] for p in problems]

    def perturbation(self, rows: int, seeds: torch.Tensor | None):
        """The latent sampler bound to `rows` rows with these seeds (default: the row index); None without one."""
        if self.latent_sampler is None:
            return None
        return self.latent_sampler.bind(seeds if seeds is not None else torch.arange(rows))

    def rollout(self, prompts: list[list[int]], seeds=None, samples: int | None = None, perturbation=None):
        """The rollout of `prompts`, `samples` rows each (i x samples + s; default the configured number); seeds:
        [rows] row seeds for the sampled thoughts and answers (default: the row index); `perturbation` in place
        of the configured sampler's."""
        samples = samples or self.samples
        return latent_rollout(
            self.lm,
            prompts,
            self.thought_map,
            self.controller,
            self.max_latents,
            self.max_new_tokens,
            sampling=self.sampling,
            seeds=seeds,
            samples=samples,
            perturbation=perturbation or self.perturbation(len(prompts) * samples, seeds),
        )


class JacobiSolver(LatentSolver):
    """A fixed number of thoughts found by `iterations` Jacobi updates (PCCoT) instead of one by one.

    Its calls feed every slot at once, so the sampler is noise only (the thought map's output at each slot,
    keyed by the slot as in the sequential rollout); the samples of a problem share its prefill."""

    latent_samplers = ("noise",)

    def __init__(self, lm, thought_map, num_latents: int, iterations: int, max_new_tokens: int = 64, name="jacobi"):
        super().__init__(lm, thought_map, fixed_latents(num_latents), num_latents, max_new_tokens, name)
        self.iterations = iterations

    def rollout(self, prompts: list[list[int]], seeds=None):
        rows = len(prompts) * self.samples
        thought_map, perturbation = self.thought_map, self.perturbation(rows, seeds)
        if perturbation is not None:
            every = torch.arange(rows, device=self.lm.device)  # Jacobi keeps every row in every call

            def thought_map(hidden, slot):
                z, extra = self.thought_map(hidden, slot)
                return perturbation.thought(z, every, slot), extra

        return jacobi_rollout(
            self.lm,
            prompts,
            thought_map,
            self.max_latents,
            self.iterations,
            self.max_new_tokens,
            sampling=self.sampling,
            seeds=seeds,
            samples=self.samples,
        )
