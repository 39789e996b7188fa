"""Pretrained models wrapped as they are (no latent tokens, no resize) and what `eval --model` resolves to."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from latentreason.errors import UserError
from latentreason.model.latent_lm import META_FILE, LatentLM
from latentreason.model.pretrained import PRETRAINED, TRAINED, generation_stop_ids, load_pretrained, model_kind
from tests.helpers import build_tiny_lm, save_tiny_chat_model, tiny_chat_tokenizer


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("pretrained") / "model")


def test_wrapping_as_is_adds_no_tokens_and_keeps_the_weights(chat_dir):
    model = AutoModelForCausalLM.from_pretrained(chat_dir)
    tokenizer = tiny_chat_tokenizer()
    rows = model.get_input_embeddings().weight.detach().clone()
    lm = LatentLM(model, tokenizer, latent_tokens=False)
    assert len(lm.tokenizer) == len(tiny_chat_tokenizer()) == rows.shape[0]
    assert torch.equal(lm.embed.weight, rows)
    assert not lm.latent_tokens
    for name in ("bot_id", "latent_id", "eot_id"):
        with pytest.raises(UserError, match="loaded without the latent special tokens"):
            getattr(lm, name)


def test_load_pretrained_of_a_plain_directory_adds_no_tokens(chat_dir):
    size = len(tiny_chat_tokenizer())
    lm = load_pretrained(str(chat_dir))
    assert len(lm.tokenizer) == size == lm.embed.weight.shape[0] == lm.model.config.vocab_size
    assert not lm.training
    # Trained models keep today's behaviour: from_pretrained adds the three tokens by default.
    assert len(LatentLM.from_pretrained(chat_dir).tokenizer) == size + 3


def test_a_directory_saved_here_keeps_the_tokens_it_was_saved_with(tmp_path, chat_dir):
    trained = build_tiny_lm("llama")
    trained.save_pretrained(tmp_path / "ckpt")
    loaded = LatentLM.from_pretrained(tmp_path / "ckpt", latent_tokens=False)
    assert (loaded.bot_id, loaded.latent_id, loaded.eot_id) == (trained.bot_id, trained.latent_id, trained.eot_id)
    # A pretrained model saved as it is loads as it is, without asking.
    load_pretrained(str(chat_dir)).save_pretrained(tmp_path / "as-is")
    again = LatentLM.from_pretrained(tmp_path / "as-is")
    assert not again.latent_tokens
    assert model_kind(str(tmp_path / "as-is")) == PRETRAINED
    assert len(again.tokenizer) == len(tiny_chat_tokenizer())


def test_a_missing_pad_token_reuses_eos(chat_dir):
    tokenizer = tiny_chat_tokenizer()
    tokenizer.pad_token = None
    lm = LatentLM(AutoModelForCausalLM.from_pretrained(chat_dir), tokenizer, latent_tokens=False)
    assert lm.pad_id == lm.eos_id == tokenizer.convert_tokens_to_ids("<|eos|>")
    assert len(lm.tokenizer) == len(tiny_chat_tokenizer())


def test_model_kinds(tmp_path, chat_dir):
    build_tiny_lm("llama").save_pretrained(tmp_path / "trained")
    assert model_kind(str(tmp_path / "trained")) == TRAINED
    assert model_kind(str(chat_dir)) == PRETRAINED
    assert model_kind("smollm2") == PRETRAINED
    assert model_kind("HuggingFaceTB/SmolLM2-135M-Instruct") == PRETRAINED
    assert (tmp_path / "trained" / META_FILE).is_file()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing", "no such directory"),
        ("empty", "a directory without config.json or latentreason.json"),
        ("notes.txt", "a file, not a model directory"),
    ],
)
def test_model_kind_errors_name_the_model_and_what_was_expected(tmp_path, name, expected):
    path = tmp_path / name
    if name == "empty":
        path.mkdir()
    elif name == "notes.txt":
        path.write_text("x")
    with pytest.raises(UserError) as err:
        model_kind(str(path))
    message = str(err.value)
    assert f"--model {path}: {expected}" in message
    assert "'smollm2', a directory trained here" in message


def test_a_bare_unknown_name_is_not_taken_for_a_hub_id():
    with pytest.raises(UserError, match="--model smolm2: no such directory; expected 'smollm2'"):
        model_kind("smolm2")


def test_generation_config_stop_ids(chat_dir):
    lm = load_pretrained(str(chat_dir))
    lm.model.generation_config = GenerationConfig(eos_token_id=[2, 268])
    assert generation_stop_ids(lm) == [2, 268]
    lm.model.generation_config = GenerationConfig(eos_token_id=5)
    assert generation_stop_ids(lm) == [5]
    lm.model.generation_config = GenerationConfig()
    assert generation_stop_ids(lm) == []
