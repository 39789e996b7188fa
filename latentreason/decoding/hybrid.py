"""The `hrpo` decoder: a model trained with HRPO (`think_inputs: hybrid`) reads its thinking tokens through its own
gates (engine/hybrid.py), as in training. The gates and their settings (h^'s top-k and temperature, the answer
marker) are saved with the model as its `hybrid_gates` head, so the decoder takes no arguments; the tokens
follow the context's sampling (greedy by default, as HRPO evaluates). `eval --model DIR` picks it for such a
directory (`default_decoder`); `--decoder text` evaluates the same model on plain tokens (hard evaluation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from latentreason.decoding.base import DecodeContext, PolicyDecoder, register_decoder
from latentreason.engine.hybrid import HybridThinking
from latentreason.errors import UserError
from latentreason.model.hybrid_gates import GATES_HEAD
from latentreason.model.latent_lm import META_FILE


@dataclass
class HybridDecoderConfig:
    pass


@register_decoder("hrpo")
class HybridDecoder(PolicyDecoder):
    config_cls = HybridDecoderConfig

    def policy(self, lm, context: DecodeContext) -> HybridThinking:
        if GATES_HEAD not in lm.heads:
            raise UserError(
                f"--decoder hrpo: the model has no HRPO gates (no '{GATES_HEAD}' head in its {META_FILE}); train "
                "them with `latentreason rl --config hrpo-tiny` (docs/rl.md)"
            )
        return HybridThinking(lm, lm.heads[GATES_HEAD], context.token_policy(lm), context.rows)


def default_decoder(model: str) -> str:
    """`hrpo` for a directory saved with HRPO's gates, else `text`."""
    meta = Path(model).expanduser() / META_FILE
    heads = json.loads(meta.read_text()).get("heads", {}) if meta.is_file() else {}
    return "hrpo" if GATES_HEAD in heads else "text"
