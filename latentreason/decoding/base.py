"""Training-free decoders: each is a policy (or a few phases of policies) on the step engine.

A decoder gets a `DecodeContext` (the prompts' ids, stop ids, thinking delimiters, the text sampling
settings and row seeds) and returns a `Generation`: every row's steps in order, which of them were soft
(embeddings) and which text, read from the engine's trace. Decoders are chosen by name
(`get_decoder("soft-thinking")`) with arguments checked like config fields (`decoder_from_args`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from latentreason.config import from_dict
from latentreason.engine.decode import TokenPolicy
from latentreason.engine.sampling import RowSampling
from latentreason.engine.steps import EMBED, FORCED, NONE, TOKEN, Trace, prefill, run_steps
from latentreason.named import Registry

DECODERS = Registry("decoder")
register_decoder = DECODERS.register


def get_decoder(name: str) -> type[Decoder]:
    return DECODERS.get_class(name)


def decoder_from_args(name: str, args: dict | None = None) -> Decoder:
    """The decoder `name` with its arguments checked against its config (unknown keys and bad types named)."""
    cls = get_decoder(name)
    return cls(from_dict(cls.config_cls, args or {}, f"--decoder-args for {name}"))


@dataclass
class DecodeContext:
    """What every decoder needs besides the model; rows are prompts x samples (row i x samples + s)."""

    prompts: list[list[int]]  # token ids, one per problem
    stop_ids: list[int]  # end a reply (eos, end of turn)
    max_new_tokens: int  # steps per row, soft and text together
    sampling: RowSampling  # [B] text sampling per row
    seeds: torch.Tensor  # [B] row seeds
    think_start: list[int]  # ids of the thinking delimiters (one id each when the vocabulary has them)
    think_end: list[int]
    samples: int = 1
    questions: list[str] | None = None  # each prompt's problem text, for verifiers and scorers
    references: list[str] | None = None  # each prompt's reference answer: oracle rewards only (labelled as such)

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.samples

    def token_policy(self, lm) -> TokenPolicy:
        """Plain token decoding of every row under the context's sampling, seeds, stops and step limit."""
        return TokenPolicy(self.rows, lm.device, self.stop_ids, self.max_new_tokens, self.sampling, self.seeds)

    def question_texts(self, tokenizer) -> list[str]:
        """The problem texts, or the decoded prompts when none were given."""
        if self.questions is not None:
            return self.questions
        return [tokenizer.decode(prompt, skip_special_tokens=True) for prompt in self.prompts]


@dataclass
class Generation:
    """Each row's steps, in order (soft steps carry their top-1 token), and what kind each was."""

    trace: Trace

    def tokens(self, row: int) -> list[int]:
        kept = self.trace.kind[row] != NONE
        return self.trace.tokens[row][kept].tolist()

    @property
    def soft_steps(self) -> torch.Tensor:
        return self.trace.count(EMBED)  # [B]

    @property
    def text_steps(self) -> torch.Tensor:
        return self.trace.count(TOKEN) + self.trace.count(FORCED)  # [B]


class Decoder(abc.ABC):
    """Subclasses set `config_cls` and implement `generate` (several phases), or derive from `PolicyDecoder`."""

    name: ClassVar[str]
    config_cls: ClassVar[type]

    def __init__(self, config):
        self.config = config

    @abc.abstractmethod
    def generate(self, lm, context: DecodeContext) -> Generation:
        """Every row's reply to `context`."""


class PolicyDecoder(Decoder):
    """A decoder that is one step policy over the whole reply: subclasses implement `policy`."""

    @abc.abstractmethod
    def policy(self, lm, context: DecodeContext):
        """The step policy for all `context.rows` rows."""

    @torch.no_grad()
    def generate(self, lm, context: DecodeContext) -> Generation:
        prefix = prefill(lm, context.prompts, context.samples)
        policy = self.policy(lm, context)
        return Generation(run_steps(lm, prefix, policy, context.max_new_tokens, batch_size=context.rows))
