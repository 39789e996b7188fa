"""Tiny offline models shared by the tests (importable as `from tests.helpers import tiny_lm`)."""

from __future__ import annotations

from latentreason.data.generators.chain import generate_chain
from latentreason.data.problems import Problem
from latentreason.model.build import problem_texts
from latentreason.model.latent_lm import LatentLM
from latentreason.model.tiny import TinyModelSpec, build_tiny_model
from latentreason.model.tokenizer import train_tokenizer

MODEL_TYPES = ("llama", "gpt2", "qwen2")
TOKENIZER_VOCAB = 320

_CACHE: dict[tuple, LatentLM] = {}


def chain_problems(n: int = 64, seed: int = 0) -> list[Problem]:
    return generate_chain(n, seed=seed)


def tiny_spec(model_type: str = "llama") -> TinyModelSpec:
    return TinyModelSpec(
        model_type=model_type,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )


def build_tiny_lm(model_type: str = "llama", seed: int = 0, problems: list[Problem] | None = None) -> LatentLM:
    """A new (uncached) LatentLM: tokenizer trained on chain problems, a 2-layer width-32 model."""
    problems = chain_problems() if problems is None else problems
    tokenizer = train_tokenizer(problem_texts(problems), vocab_size=TOKENIZER_VOCAB)
    model = build_tiny_model(tiny_spec(model_type), tokenizer, seed=seed)
    model.eval()
    return LatentLM(model, tokenizer)


def tiny_lm(model_type: str = "llama", seed: int = 0, problems: list[Problem] | None = None) -> LatentLM:
    """Like `build_tiny_lm` but cached per arguments: callers must not modify the returned model."""
    key_problems = None if problems is None else tuple((p.question, tuple(p.steps), p.answer) for p in problems)
    key = (model_type, seed, key_problems)
    if key not in _CACHE:
        _CACHE[key] = build_tiny_lm(model_type, seed, problems)
    return _CACHE[key]
