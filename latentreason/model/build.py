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


def frozen_lm(name: str, tiny_model: dict, vocab_size: int, train: list[Problem], seed: int) -> LatentLM:
    """A model used as it is (no latent tokens): 'tiny' builds one from scratch, anything else is loaded."""
    if name != "tiny":
        from latentreason.model.pretrained import load_pretrained, model_kind

        model_kind(name)  # a mistyped path fails here, naming what was expected
        return load_pretrained(name)
    tokenizer = train_tokenizer(problem_texts(train), vocab_size)
    spec = from_dict(TinyModelSpec, tiny_model, "tiny model")
    return LatentLM(build_tiny_model(spec, tokenizer, seed=seed), tokenizer, latent_tokens=False)


def build_soft_thought_lm(config, train: list[Problem], initial_tokens: int = 0):
    """The frozen main and assistant models of a SoftCoT config with a fresh projection and `initial_tokens`
    trained initial tokens (SoftCoT++; 0 for SoftCoT)."""
    from latentreason.model.soft_thoughts import BUILT, SoftThoughtLM

    main_name, assistant_name = config.model_name_or_path, config.assistant_model_name_or_path
    main = frozen_lm(main_name, config.tiny_model, config.tokenizer_vocab_size, train, config.seed)
    if assistant_name == main_name and main_name != "tiny":
        assistant = main  # one frozen model in both roles
    else:
        vocab = config.assistant_tokenizer_vocab_size
        assistant = frozen_lm(assistant_name, config.assistant_tiny_model, vocab, train, config.seed + 1)
    sources = {}
    for role, name in (("main", main_name), ("assistant", assistant_name)):
        sources[role] = BUILT if name == "tiny" else str(Path(name).resolve()) if Path(name).is_dir() else name
    return SoftThoughtLM(main, assistant, sources, initial_tokens)
