"""Pause tokens (Goyal et al. 2024) in Coconut's layout: learned <pause> embeddings fill the latent slots.

Every slot holds the same learned vector, the embedding row of `<|latent|>` (trained with the embedding
matrix and saved with the model, as when the reference keeps its latent tokens as plain tokens). No
slot depends on an earlier hidden state, so training is one teacher-forced call over
`question <bot> <pause>*k <eot> remaining steps ### answer` instead of the latent pass's k + 1 calls;
inference runs the shared rollout with the pause vector as a constant thought map.

Two of Coconut's comparisons are switches of this method:
  curriculum false (default)  the pause-token baseline: every step removed from the first step on,
                              max_latent_stage * c_thought pauses (pad_latent_to_max), answer only
  curriculum true             Coconut's "pause as thought" ablation: Coconut's stages, with c_thought
                              pauses in place of each replaced step's continuous thoughts
Coconut's "w/o curriculum" ablation is `coconut` with `curriculum: false`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.methods.base import register_method
from latentreason.methods.coconut import Coconut, CoconutConfig
from latentreason.methods.sft import teacher_forced_loss


@dataclass
class PauseConfig(CoconutConfig):
    curriculum: bool = field(
        False, help="false: the pause-token baseline (final stage from the start); true: Coconut's 'pause as thought'"
    )
    pad_latent_to_max: bool = field(
        True, help="use max_latent_stage * c_thought pauses for every problem past the last stage (as at inference)"
    )


@register_method("pause")
class PauseTokens(Coconut):
    config_cls = PauseConfig

    def collate(self, lm, problems):
        sequences, labels = [], []
        for enc, removed, pauses in self.rows(lm, problems):
            head = enc.prompt + [lm.bot_id] + [lm.latent_id] * pauses
            suffix = self.suffix(lm, enc, removed)
            sequences.append(head + suffix)
            labels.append([IGNORE] * (len(head) + 1) + suffix[1:])  # nothing is predicted for <eot> itself
        return left_pad(sequences, lm.pad_id, labels)

    def batch_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, lm, batch):
        return teacher_forced_loss(lm, batch)

    def thought_map(self, lm):
        def pause(hidden, slot):
            pause = lm.embed(torch.tensor([lm.latent_id], device=hidden.device))  # [1, d]; embed() may scale
            return pause.expand(hidden.shape[0], -1), None  # [B, d]

        return pause
