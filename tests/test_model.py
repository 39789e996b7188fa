"""LatentLM special tokens and persistence, the tiny-model factory, the tokenizer, next_token_loss."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForCausalLM, LlamaConfig

from latentreason.config import from_dict
from latentreason.engine.batch import IGNORE
from latentreason.errors import ConfigError, UserError
from latentreason.methods.atp import ATPConfig, ATPLatent
from latentreason.methods.base import next_token_loss
from latentreason.methods.sft import CoTSFT
from latentreason.model.build import problem_texts
from latentreason.model.latent_lm import META_FILE, SPECIAL_TOKENS, LatentLM
from latentreason.model.tiny import TinyModelSpec, build_tiny_model
from latentreason.model.tokenizer import train_tokenizer
from latentreason.train_config import SFTConfig
from tests.helpers import MODEL_TYPES, TOKENIZER_VOCAB, build_tiny_lm, chain_problems, tiny_lm, tiny_spec


def fresh_tokenizer():
    return train_tokenizer(problem_texts(chain_problems()), vocab_size=TOKENIZER_VOCAB)


def single_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} should be one token, got {ids}"
    return ids[0]


def sample_batch(lm, n: int = 3) -> dict:
    return CoTSFT(SFTConfig()).collate(lm, chain_problems(n, seed=11))


# --- special tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_special_tokens_added_once_with_init_from_rows(model_type):
    lm = tiny_lm(model_type)
    base = len(fresh_tokenizer())
    assert len(lm.tokenizer) == base + 3
    ids = [lm.bot_id, lm.latent_id, lm.eot_id]
    assert ids == [base, base + 1, base + 2]
    assert lm.tokenizer.convert_ids_to_tokens(ids) == list(SPECIAL_TOKENS)
    assert lm.embed.weight.shape[0] == base + 3 == lm.model.config.vocab_size
    src = single_id(lm.tokenizer, "<<")
    for matrix in (lm.embed.weight, lm.lm_head.weight):
        for new in ids:
            assert torch.equal(matrix[new], matrix[src])
    # Special tokens are atomic: the text of a latent run tokenizes back to the special ids.
    text = SPECIAL_TOKENS[0] + SPECIAL_TOKENS[1] * 2 + SPECIAL_TOKENS[2]
    assert lm.tokenizer(text, add_special_tokens=False)["input_ids"] == [
        lm.bot_id,
        lm.latent_id,
        lm.latent_id,
        lm.eot_id,
    ]


def test_rewrapping_keeps_tokens_and_trained_rows(tmp_path):
    lm = build_tiny_lm("llama")
    size = len(lm.tokenizer)
    ids = (lm.bot_id, lm.latent_id, lm.eot_id)
    with torch.no_grad():  # pretend training moved the latent row away from its '<<' initialisation
        lm.embed.weight[lm.latent_id] = torch.arange(lm.embed.weight.shape[1], dtype=torch.float)
    trained = lm.embed.weight.detach().clone()

    again = LatentLM(lm.model, lm.tokenizer)
    assert len(again.tokenizer) == size
    assert (again.bot_id, again.latent_id, again.eot_id) == ids
    assert torch.equal(again.embed.weight, trained)

    lm.save_pretrained(tmp_path / "ckpt")
    loaded = LatentLM.from_pretrained(tmp_path / "ckpt")
    assert len(loaded.tokenizer) == size
    assert (loaded.bot_id, loaded.latent_id, loaded.eot_id) == ids
    assert torch.equal(loaded.embed.weight, trained)


def test_untied_head_rows_also_copy_init_from():
    tokenizer = fresh_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    lm = LatentLM(AutoModelForCausalLM.from_config(config), tokenizer, init_from="=")
    embed, head = lm.embed.weight, lm.lm_head.weight
    assert embed.data_ptr() != head.data_ptr()
    src = single_id(tokenizer, "=")
    assert not torch.equal(embed[src], head[src])
    for new in (lm.bot_id, lm.latent_id, lm.eot_id):
        assert torch.equal(embed[new], embed[src])
        assert torch.equal(head[new], head[src])


def test_init_from_that_tokenizes_to_nothing_is_a_user_error():
    tokenizer = fresh_tokenizer()
    model = build_tiny_model(tiny_spec("llama"), tokenizer)
    with pytest.raises(UserError, match="init_from"):
        LatentLM(model, tokenizer, init_from="")


# --- persistence -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_save_load_round_trip(tmp_path, model_type):
    lm = tiny_lm(model_type)
    directory = tmp_path / "model"
    lm.save_pretrained(directory)

    assert (directory / "model.safetensors").is_file()
    weights = [p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    assert weights == []
    assert json.loads((directory / META_FILE).read_text())["special_tokens"] == list(SPECIAL_TOKENS)

    loaded = LatentLM.from_pretrained(directory)
    loaded.model.eval()
    batch = sample_batch(lm)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        assert torch.equal(lm.model(**inputs).logits, loaded.model(**inputs).logits)
    text = chain_problems(1, seed=3)[0].question + " <<1+2=3>> " + SPECIAL_TOKENS[1] + "\n### 7"
    assert loaded.tokenizer(text)["input_ids"] == lm.tokenizer(text)["input_ids"]
    assert (loaded.pad_id, loaded.eos_id) == (lm.pad_id, lm.eos_id)
    assert loaded.tokenizer.padding_side == "left"
    # Still special after the reload: solvers drop them from decoded text.
    assert loaded.tokenizer.decode([loaded.bot_id, loaded.latent_id, loaded.eot_id], skip_special_tokens=True) == ""


@pytest.mark.parametrize("step_decoder", ["copy", "small"])
def test_saving_whole_weights_given_as_copies_writes_the_files_the_live_model_writes(tmp_path, step_decoder):
    """FSDP hands `save_pretrained` whole tensors gathered one by one: tied weights (the embeddings and LM
    head, also inside the step decoder) arrive as separate copies and must still be written once."""
    lm = build_tiny_lm("llama", seed=1)
    ATPLatent(ATPConfig(c_thought=1, step_decoder=step_decoder, step_decoder_layers=1)).prepare(lm)
    assert lm.embed.weight is lm.lm_head.weight  # tied, and so is the decoder copy
    lm.save_pretrained(tmp_path / "live")
    lm.save_pretrained(tmp_path / "given", state_dict={k: v.clone() for k, v in lm.state_dict().items()})
    for name in ("model.safetensors", "heads.safetensors"):
        files = [safe_open(str(tmp_path / run / name), "pt") for run in ("live", "given")]
        assert files[0].keys() == files[1].keys()
        assert files[0].metadata() == files[1].metadata()
        assert all(torch.equal(files[0].get_tensor(k), files[1].get_tensor(k)) for k in files[0].keys())
    assert "step_decoder.model.embed_tokens.weight" not in files[1].keys()  # written once, under the other name
    loaded = LatentLM.from_pretrained(tmp_path / "given").state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in lm.state_dict().items())


def test_from_pretrained_rejects_a_directory_without_config(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        LatentLM.from_pretrained(tmp_path)


# --- tiny factory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tiny_factory_matches_tokenizer(model_type):
    tokenizer = fresh_tokenizer()
    spec = tiny_spec(model_type)
    model = build_tiny_model(spec, tokenizer, seed=1)
    config = model.config
    assert config.model_type == model_type
    assert config.vocab_size == len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert config.hidden_size == 32 and config.num_hidden_layers == 2 and config.num_attention_heads == 2
    assert config.latentreason_tiny == asdict(spec)
    same = build_tiny_model(spec, tokenizer, seed=1)
    other = build_tiny_model(spec, tokenizer, seed=2)
    first = next(iter(model.state_dict()))
    assert torch.equal(model.state_dict()[first], same.state_dict()[first])
    assert not torch.equal(model.state_dict()[first], other.state_dict()[first])


def test_bad_tiny_specs_raise_config_error():
    with pytest.raises(ConfigError, match="model_type.*'bert'"):
        TinyModelSpec(model_type="bert")
    with pytest.raises(ConfigError, match=r"hidden_size \(30\).*num_attention_heads \(4\)"):
        TinyModelSpec(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        from_dict(TinyModelSpec, {"hiden_size": 64}, "field 'tiny_model'")
    with pytest.raises(ConfigError, match="field 'num_hidden_layers'"):
        from_dict(TinyModelSpec, {"num_hidden_layers": "two"}, "field 'tiny_model'")


# --- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_round_trips_text_exactly():
    tokenizer = fresh_tokenizer()
    texts = [
        problem_texts(chain_problems(1, seed=9))[0],
        "  leading spaces, a tab\tand\n\nblank lines  ",
        "1 , 2 . 3 ? it's -4 don't",
        "café ÷ 3 = ½ — 😀",
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_splits_every_digit_and_is_deterministic():
    tokenizer = fresh_tokenizer()
    tokens = tokenizer.tokenize("1234567890")
    assert tokens == list("1234567890")
    pieces = tokenizer.tokenize("<<78*96=8>>")
    digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digits == ["7", "8", "9", "6", "8"]
    assert fresh_tokenizer().get_vocab() == tokenizer.get_vocab()
    assert tokenizer.padding_side == "left"
    specials = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert tokenizer.convert_ids_to_tokens(specials) == ["<|pad|>", "<|bos|>", "<|eos|>"]


# --- next_token_loss ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_next_token_loss_equals_hf_labels_loss(model_type):
    lm = tiny_lm(model_type)
    batch = sample_batch(lm)
    labels = batch["labels"]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    assert (labels == IGNORE).any() and (labels != IGNORE).any()

    rows_seen = []
    hook = lm.lm_head.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].shape))
    try:
        with torch.no_grad():
            hidden = lm.backbone(**inputs).last_hidden_state  # [B, L, d]
            ours, count = next_token_loss(lm, hidden, labels)
    finally:
        hook.remove()
    expected = int((labels[:, 1:] != IGNORE).sum())
    assert count == expected
    # The head ran once, on the labelled positions only (a 2-D [N, d] input, not [B, L, d]).
    assert rows_seen == [torch.Size([expected, hidden.shape[-1]])]

    with torch.no_grad():
        reference = lm.model(**inputs, labels=labels).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_next_token_loss_shift_by_hand():
    lm = tiny_lm("llama")
    batch = sample_batch(lm, n=2)
    with torch.no_grad():
        hidden = lm.backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).last_hidden_state
    labels = torch.full_like(batch["labels"], IGNORE)
    labels[0, 0] = 5  # never predicted: nothing precedes position 0
    labels[1, 7] = 42  # predicted from hidden[1, 6]
    labels[0, -1] = 17  # predicted from hidden[0, -2]
    with torch.no_grad():
        loss, count = next_token_loss(lm, hidden, labels)
        logits = lm.lm_head(torch.stack([hidden[1, 6], hidden[0, -2]]))
    assert count == 2
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([42, 17])))


def test_next_token_loss_with_nothing_labelled_is_zero_and_differentiable():
    lm = tiny_lm("gpt2")
    hidden = torch.randn(2, 5, lm.model.config.hidden_size, requires_grad=True)
    labels = torch.full((2, 5), IGNORE)
    labels[:, 0] = 3  # labels at position 0 only: still nothing to predict
    loss, count = next_token_loss(lm, hidden, labels)
    assert count == 0 and loss.item() == 0.0
    loss.backward()
    assert hidden.grad is not None and torch.equal(hidden.grad, torch.zeros_like(hidden))
