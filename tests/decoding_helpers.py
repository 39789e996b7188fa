"""Shared by the decoder tests: a decode context for tiny models, and SmolLM2 wrapped for the step engine."""

from __future__ import annotations

import functools

import torch

from latentreason.decoding import DecodeContext
from latentreason.decoding.prompts import user_turn
from latentreason.engine.sampling import Sampling


def decode_context(
    lm, prompts, max_new_tokens=8, seeds=None, sampling=None, samples=1, questions=None
) -> DecodeContext:
    """Greedy unless `sampling` says otherwise; a stop id outside the vocabulary, so rows run to the end."""
    rows = len(prompts) * samples
    return DecodeContext(
        prompts=prompts,
        stop_ids=[len(lm.tokenizer) + 10],
        max_new_tokens=max_new_tokens,
        sampling=(sampling or Sampling()).rows(rows),
        seeds=torch.arange(rows) * 7 + 1 if seeds is None else seeds,
        think_start=[lm.bot_id],
        think_end=[lm.eot_id],
        samples=samples,
        questions=questions,
    )


@functools.cache
def smollm2():
    """SmolLM2-135M-Instruct as a LatentLM, loaded once (tests using it carry `needs_smollm2`)."""
    from latentreason.model.latent_lm import LatentLM
    from latentreason.model.smollm import load_smollm2

    model, tokenizer = load_smollm2()
    return LatentLM(model, tokenizer)


def chat_prompt(lm, question: str) -> list[int]:
    return user_turn(lm.tokenizer, question, "always")


def smollm2_stop_ids(lm) -> list[int]:
    return [lm.eos_id, lm.tokenizer.convert_tokens_to_ids("<|im_end|>")]
