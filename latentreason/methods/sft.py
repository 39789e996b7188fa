"""Text baselines: CoT-SFT (question -> steps -> answer) and No-CoT (question -> answer)."""

from __future__ import annotations

import torch

from latentreason.engine.batch import IGNORE, left_pad
from latentreason.evaluation.solvers import TextSolver
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, next_token_loss, register_method


def teacher_forced_loss(lm, batch: dict) -> tuple[torch.Tensor, dict]:
    """CE of a `left_pad` batch (input_ids, attention_mask, position_ids, labels) in one call."""
    hidden = lm.backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).last_hidden_state  # [B, L, d]
    loss, count = next_token_loss(lm, hidden, batch["labels"])
    return loss, {"ce": float(loss.detach()), "tokens": count}


class TextSFT(Method):
    """Teacher-forced CE on everything after the question; `with_cot` decides whether steps are kept."""

    with_cot = True

    def collate(self, lm, problems):
        sequences, labels = [], []
        for problem in problems:
            enc = encode_problem(lm.tokenizer, problem)
            target = (enc.cot if self.with_cot else []) + enc.answer
            sequences.append(enc.prompt + target)
            labels.append([IGNORE] * len(enc.prompt) + target)
        return left_pad(sequences, lm.pad_id, labels)

    def loss(self, lm, batch):
        return teacher_forced_loss(lm, batch)

    def solver(self, lm):
        return TextSolver(lm, self.config.max_new_tokens, name=self.name)


@register_method("cot")
class CoTSFT(TextSFT):
    with_cot = True


@register_method("no-cot")
class NoCoT(TextSFT):
    with_cot = False
