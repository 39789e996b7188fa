"""A solver turns a batch of problems into generated text plus reasoning-length counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.data.problems import Problem
from latentreason.engine.decode import decode_from
from latentreason.engine.sampling import Sampling, row_seeds
from latentreason.engine.steps import prefill
from latentreason.errors import ConfigError
from latentreason.layout import ANSWER_MARKER, encode_problem


@dataclass
class Solution:
    text: str  # everything generated after the prompt (reasoning text and answer)
    text_tokens: int  # generated tokens before the answer marker (explicit reasoning)
    latent_tokens: int = 0  # continuous thoughts used
    samples: list[Solution] | None = None  # every sampled reply to the problem (the first is the one above)
    score: float | None = None  # a scorer's rating of this reply, for best-of-N
    beams: dict[int, Solution] | None = None  # beam search's answer at each width (the widest is the one above)
    metrics: dict[str, float] | None = None  # a solver's own per-problem figures (compute saved); results.json: means


def count_reasoning_tokens(tokenizer, text: str) -> int:
    """Tokens of the text before the answer marker (all of it when there is no marker)."""
    reasoning = text.split(ANSWER_MARKER)[0] if ANSWER_MARKER in text else text
    return len(tokenizer(reasoning.strip(), add_special_tokens=False)["input_ids"])


def by_problem(solutions: list[Solution], samples: int) -> list[Solution]:
    """One Solution per problem from rows i x samples + s: the first sample, holding all of them when several."""
    if samples == 1:
        return solutions
    groups = [solutions[i : i + samples] for i in range(0, len(solutions), samples)]
    return [Solution(g[0].text, g[0].text_tokens, g[0].latent_tokens, samples=g) for g in groups]


class SampledSolver:
    """A solver whose answers may be sampled, `samples` per problem from one shared prefill, with row seeds keyed
    by (seed, question, sample): a problem's samples do not depend on the batch they ran in."""

    def configure(self, sampling: Sampling | None = None, seed: int = 0, samples: int = 1) -> None:
        if samples < 1:
            raise ConfigError(f"num_samples: expected >= 1, got {samples}")
        self.sampling, self.seed, self.samples = sampling or Sampling(), seed, samples

    def row_seeds(self, problems: list[Problem]):
        return row_seeds(self.seed, [p.question for p in problems], self.samples)


class TextSolver(SampledSolver):
    """Greedy (or sampled) text generation from the question prompt, batched on one KV cache."""

    def __init__(self, lm, max_new_tokens: int = 64, name: str = "text", sampling: Sampling | None = None, seed=0):
        self.lm, self.max_new_tokens, self.name = lm, max_new_tokens, name
        self.configure(sampling, seed)

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm = self.lm
        prompts = [encode_problem(lm.tokenizer, p).prompt for p in problems]
        out = decode_from(
            lm,
            prefill(lm, prompts, self.samples),
            self.max_new_tokens,
            stop_ids=[lm.eos_id],
            sampling=self.sampling,
            seeds=self.row_seeds(problems),
        )
        texts = lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        rows = zip(texts, out.tokens.tolist())
        return by_problem([self.solution(text, ids) for text, ids in rows], self.samples)

    def solution(self, text: str, ids: list[int]) -> Solution:
        """The Solution of one reply: its text (special tokens dropped) and generated ids (pad after the stop)."""
        return Solution(text, count_reasoning_tokens(self.lm.tokenizer, text))
