"""A solver for pretrained chat models: prompts from a `PromptBuilder`, batched decoding until a stop token."""

from __future__ import annotations

import torch

from latentreason.data.problems import Problem
from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode
from latentreason.errors import ConfigError
from latentreason.evaluation.prompting import PromptBuilder
from latentreason.evaluation.solvers import Solution


class ChatSolver:
    """The model's reply to each question's chat prompt; all of it counts as text reasoning.

    `Solution.text_tokens` is the number of generated tokens before the stop token, read from the
    decoder's lengths (a reply cut at `max_new_tokens` counts all of them).
    """

    def __init__(
        self, lm, prompt: PromptBuilder, max_new_tokens: int = 256, temperature: float = 0.0, name: str = "chat"
    ):
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: a reply needs at least 1 token, got {max_new_tokens}")
        self.lm, self.prompt, self.name = lm, prompt, name
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.stop_ids = prompt.stop_ids()  # read once: it renders the template

    @torch.no_grad()
    def solve(self, problems: list[Problem]) -> list[Solution]:
        lm = self.lm
        batch = left_pad([self.prompt.ids(p.question) for p in problems], lm.pad_id)
        out = decode(
            lm,
            batch["input_ids"].to(lm.device),
            batch["attention_mask"].to(lm.device),
            self.max_new_tokens,
            stop_ids=self.stop_ids,
            temperature=self.temperature,
        )
        tokens, lengths = out.tokens.cpu(), out.lengths.cpu()  # [B, T], [B]
        rows = torch.arange(tokens.shape[0])  # [B]
        last = tokens[rows, (lengths - 1).clamp(min=0)]  # [B] each row's last generated token
        stopped = (lengths > 0) & torch.isin(last, torch.tensor(self.stop_ids))  # [B]
        reasoning = (lengths - stopped.long()).tolist()  # [B] without the stop token
        texts = [lm.tokenizer.decode(row[:n], skip_special_tokens=True).strip() for row, n in zip(tokens, reasoning)]
        return [Solution(text, n) for text, n in zip(texts, reasoning)]
