"""A solver for pretrained chat models: prompts from a `PromptBuilder`, then a decoder on the step engine
(plain decoding by default; Soft Thinking, SwiReasoning, ... with `--decoder`)."""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.decoding import DecodeContext, Decoder, decoder_from_args
from latentreason.engine.sampling import Sampling
from latentreason.errors import ConfigError
from latentreason.evaluation.prompting import PromptBuilder
from latentreason.evaluation.solvers import SampledSolver, Solution, by_problem


class ChatSolver(SampledSolver):
    """The model's reply to each question's chat prompt, `samples` replies per question.

    A reply's text is every step's token in order (a soft step shows its top-1 token), without the stop
    token. Its reasoning counts come from the trace: `latent_tokens` the soft steps, `text_tokens` the
    text steps (chosen or forced) before the stop token. Sampled rows draw from seeds keyed by
    (seed, question, sample), so a reply does not depend on the batch it ran in.
    """

    def __init__(
        self,
        lm,
        prompt: PromptBuilder,
        max_new_tokens: int = 256,
        sampling: Sampling | None = None,
        decoder: Decoder | None = None,
        samples: int = 1,
        seed: int = 0,
    ):
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: a reply needs at least 1 token, got {max_new_tokens}")
        self.lm, self.prompt, self.max_new_tokens = lm, prompt, max_new_tokens
        self.configure(sampling, seed, samples)
        self.decoder = decoder or decoder_from_args("text")
        self.name = "chat" if self.decoder.name == "text" else self.decoder.name  # e.g. latentseek(oracle)
        self.stop_ids = prompt.stop_ids()  # read once: it renders the template
        self.think_start, self.think_end = prompt.think_ids()

    def context(self, problems: list[Problem]) -> DecodeContext:
        rows = len(problems) * self.samples
        return DecodeContext(
            prompts=[self.prompt.ids(p.question) for p in problems],
            stop_ids=self.stop_ids,
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling.rows(rows, self.lm.device),
            seeds=self.row_seeds(problems),
            think_start=self.think_start,
            think_end=self.think_end,
            samples=self.samples,
            questions=[p.question for p in problems],
            references=[p.answer for p in problems],
        )

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        generation = self.decoder.generate(self.lm, self.context(problems))
        soft, text = generation.soft_steps.tolist(), generation.text_steps.tolist()
        replies = []
        for row in range(len(problems) * self.samples):
            tokens = generation.tokens(row)
            ends = bool(tokens) and tokens[-1] in self.stop_ids
            if ends:
                tokens = tokens[:-1]
            reply = self.lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            replies.append(Solution(reply, text[row] - int(ends), soft[row]))
        return by_problem(replies, self.samples)
