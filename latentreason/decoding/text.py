"""Plain token decoding (greedy, or sampled with the context's settings): the baseline every decoder is
compared with, and what the degenerate settings of the others must equal."""

from __future__ import annotations

from dataclasses import dataclass

from latentreason.decoding.base import DecodeContext, PolicyDecoder, register_decoder
from latentreason.engine.decode import TokenPolicy


@dataclass
class TextConfig:
    pass


@register_decoder("text")
class TextDecoder(PolicyDecoder):
    config_cls = TextConfig

    def policy(self, lm, context: DecodeContext) -> TokenPolicy:
        return context.token_policy(lm)
