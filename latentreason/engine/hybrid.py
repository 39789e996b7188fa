"""HRPO's hybrid thinking as a step-engine policy, shared by RL sampling (rl/hybrid_policy.py) and evaluation
(the `hrpo` decoder).

Every step the row's token comes from a `TokenPolicy` (sampled in RL, greedy or sampled when evaluating) and is
the reply's text. While the row thinks, that token is fed as gates(e, h^) (model/hybrid_gates.py) rather than as
its embedding e, h^ the normalised top-k mixture of softmax(logits / the gates' temperature) at the step that
chose it. A row thinks until its reply's text contains the answer marker; the token that completes the marker
and every later one are fed as plain tokens, as in the public HRPO code. With closed gates (a = 1) the policy
is ordinary token decoding.
"""

from __future__ import annotations

import torch

from latentreason.engine.decode import TokenPolicy
from latentreason.engine.mixture import normalized_mixture
from latentreason.engine.steps import StepChoice, StepView


class MarkerWatch:
    """Whether each row's reply has written `marker` yet, decoding only its last few tokens at each step: the
    marker first appears within the newest 2 x len(marker) tokens (a token is at least one character, skipped
    special tokens aside)."""

    row_state = ("recent",)  # engine.slots: a list of each row's newest tokens

    def __init__(self, tokenizer, marker: str, rows: int):
        self.tokenizer, self.marker, self.window = tokenizer, marker, 2 * len(marker)
        self.recent: list[list[int]] = [[] for _ in range(rows)]

    def written(self, rows: list[int], tokens: list[int]) -> list[bool]:
        """Append each row's new token; True where the marker is now in its text."""
        for row, token in zip(rows, tokens):
            self.recent[row] = (self.recent[row] + [token])[-self.window :]
        texts = self.tokenizer.batch_decode([self.recent[row] for row in rows], skip_special_tokens=True)
        return [self.marker in text for text in texts]


class HybridThinking:
    """The step policy. `record_steps` > 0 keeps, per row and step, the h^ fed (`mixtures` [B, T, d]) and the
    mean of a over d (`ratios` [B, T]): what RL's recomputation and metrics read; its rows start together.
    Without records it serves continuously (rows join a running batch, engine.slots)."""

    def __init__(self, lm, gates, tokens: TokenPolicy, rows: int, record_steps: int = 0):
        self.lm, self.gates, self.tokens = lm, gates, tokens
        self.watch = MarkerWatch(lm.tokenizer, gates.settings.answer_marker, rows)
        self.thinking = torch.ones(rows, dtype=torch.bool, device=lm.device)  # [B]
        weight = lm.embed.weight
        self.mixtures = weight.new_zeros(rows, record_steps, weight.shape[1]) if record_steps else None  # [B, T, d]
        self.ratios = torch.zeros(rows, record_steps, device=lm.device) if record_steps else None  # [B, T]

    @property
    def row_state(self) -> tuple[str, ...]:
        """engine.slots: what a row joining a running batch takes over. A recording policy (RL) files its records
        by the batch's step, which is not a joining row's own, so it has none (hasattr is False)."""
        if self.mixtures is not None:
            raise AttributeError("a HybridThinking that records its steps is not served continuously")
        return ("tokens", "thinking", "watch")

    def step(self, view: StepView) -> StepChoice:
        settings, rows = self.gates.settings, view.rows
        logits = view.logits  # [b, V]
        ids, logprobs, finished = self.tokens.choose(logits, rows)  # [b] each
        thinking = self.thinking[rows]  # [b]
        at = thinking.nonzero().squeeze(1)  # [n]
        if at.numel():
            written = self.watch.written(rows[at].tolist(), ids[at].tolist())
            thinking[at] = ~torch.tensor(written, device=thinking.device)
            self.thinking[rows] = thinking
        hybrid = thinking & ~finished  # [b] a finishing step is never fed
        at = hybrid.nonzero().squeeze(1)  # [n]
        if not at.numel():
            return StepChoice(ids, logprobs=logprobs, finished=finished)
        embed = self.lm.embed
        mixture = normalized_mixture(embed, logits[at] / settings.temperature, settings.top_k)  # [n, d]
        mixture = mixture.to(embed.weight.dtype)  # what is recorded is exactly what the gates read
        fed, a = self.gates(embed(ids[at]), mixture)  # [n, d] each
        if self.mixtures is not None:
            self.mixtures[rows[at], view.t] = mixture
            self.ratios[rows[at], view.t] = a.float().mean(-1)
        embeds = view.hidden.new_zeros(view.hidden.shape)  # [b, d]
        embeds[at] = fed.to(embeds.dtype)
        return StepChoice(ids, embeds=embeds, is_embed=hybrid, logprobs=logprobs, finished=finished)
