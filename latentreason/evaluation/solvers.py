"""A solver turns a batch of problems into generated text plus reasoning-length counts."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.data.problems import Problem
from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode
from latentreason.engine.sampling import Sampling, row_seeds
from latentreason.layout import ANSWER_MARKER, encode_problem


@dataclass
class Solution:
    text: str  # everything generated after the prompt (reasoning text and answer)
    text_tokens: int  # generated tokens before the answer marker (explicit reasoning)
    latent_tokens: int = 0  # continuous thoughts used
    samples: list[Solution] | None = None  # every sampled reply to the problem (the first is the one above)
    score: float | None = None  # a scorer's rating of this reply, for best-of-N


def count_reasoning_tokens(tokenizer, text: str) -> int:
    """Tokens of the text before the answer marker (all of it when there is no marker)."""
    reasoning = text.split(ANSWER_MARKER)[0] if ANSWER_MARKER in text else text
    return len(tokenizer(reasoning.strip(), add_special_tokens=False)["input_ids"])


class TextSolver:
    """Greedy (or sampled) text generation from the question prompt, batched on one KV cache.

    Sampled rows draw from seeds keyed by (seed, question): a problem's answer does not depend on its batch."""

    def __init__(self, lm, max_new_tokens: int = 64, name: str = "text", sampling: Sampling | None = None, seed=0):
        self.lm, self.max_new_tokens, self.name = lm, max_new_tokens, name
        self.sampling, self.seed = sampling or Sampling(), seed

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm = self.lm
        prompts = [encode_problem(lm.tokenizer, p).prompt for p in problems]
        batch = left_pad(prompts, lm.pad_id)
        out = decode(
            lm,
            batch["input_ids"].to(lm.device),
            batch["attention_mask"].to(lm.device),
            self.max_new_tokens,
            stop_ids=[lm.eos_id],
            sampling=self.sampling,
            seeds=row_seeds(self.seed, [p.question for p in problems]),
        )
        texts = lm.tokenizer.batch_decode(out.tokens.cpu(), skip_special_tokens=True)
        return [Solution(text, count_reasoning_tokens(lm.tokenizer, text)) for text in texts]
