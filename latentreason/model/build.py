"""Build the `LatentLM` a config asks for: a tiny from-scratch model, SmolLM2, or a local directory."""

from __future__ import annotations

from pathlib import Path

from latentreason.config import from_dict
from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.layout import ANSWER_MARKER
from latentreason.model.latent_lm import LatentLM
from latentreason.model.tiny import TinyModelSpec, build_tiny_model
from latentreason.model.tokenizer import train_tokenizer


def problem_texts(problems: list[Problem]) -> list[str]:
    return [f"{p.question}\n{p.cot}\n{ANSWER_MARKER} {p.answer}" for p in problems]


def build_latent_lm(config, train: list[Problem]) -> LatentLM:
    name = config.model_name_or_path
    if name == "tiny":
        tokenizer = train_tokenizer(problem_texts(train), config.tokenizer_vocab_size)
        spec = from_dict(TinyModelSpec, config.tiny_model, "field 'tiny_model'")
        model = build_tiny_model(spec, tokenizer, seed=config.seed)
        return LatentLM(model, tokenizer, init_from=config.init_from_token)
    if name == "smollm2":
        from latentreason.model.smollm import load_smollm2

        model, tokenizer = load_smollm2()
        return LatentLM(model, tokenizer, init_from=config.init_from_token)
    if Path(name).exists() or "/" in name:
        return LatentLM.from_pretrained(name)  # a local directory or a hub id (needs a network)
    raise UserError(
        f"model_name_or_path={name!r}: expected 'tiny', 'smollm2', a local model directory or a hub id "
        f"such as meta-llama/Llama-3.2-1B-Instruct"
    )
