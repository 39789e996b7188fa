"""A latent method's actions, shared by its solver (greedy decisions) and by RL (sampled, rl/policy.py).

At each latent slot j the rollout feeds a thought z x scale, z from the method's Gaussian latent head,
and asks before the slot whether a row stops thinking. The method decides only at slots with
j % group == 0, from `stop_logits` (continue, stop); the solver takes the greedy decision, RL samples it
and scores it with the same logits. A method offers RL its actions through `Method.latent_actions`.
"""

from __future__ import annotations

import abc

import torch

from latentreason.engine.rollout import Controller
from latentreason.layout import encode_problem

CONTINUE, STOP = 0, 1  # the two columns of stop_logits


class LatentActions(abc.ABC):
    """Subclasses set `stop_reads_latent` and implement `stop_logits`."""

    group = 1  # decisions at slots j with j % group == 0
    scale = 1.0  # the thought fed is z x scale
    stop_reads_latent: bool  # the decision before slot j reads that slot's z: where a row stops, its z is an action

    def __init__(self, lm, latent_head, max_latents: int):
        self.lm, self.latent_head, self.max_latents = lm, latent_head, max_latents

    def prompt(self, problem) -> list[int]:
        return encode_problem(self.lm.tokenizer, problem).prompt + [self.lm.bot_id]

    @abc.abstractmethod
    def stop_logits(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """[.., 2] (continue, stop) logits from the hidden state before the slot [.., d] and the slot's z [.., d]."""

    def greedy_stop(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.stop_logits(hidden, z).argmax(-1) == STOP  # [..]

    def controller(self, sample: bool = False, generator: torch.Generator | None = None) -> Controller:
        """The rollout's stop rule: greedy, or sampled from softmax(stop_logits) with `generator`."""

        def stop(j, hidden, z, extra, rows):
            if j >= self.max_latents:
                return torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
            if j % self.group:
                return torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
            if not sample:
                return self.greedy_stop(hidden, z)
            probs = self.stop_logits(hidden, z).softmax(-1)  # [B, 2]
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1) == STOP

        return stop
