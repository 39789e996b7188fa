"""Token Assorted: code assignment, the straight-through gradient, the chunk -> code -> sequence layout,
stage 1 + stage 2 training, save -> load -> answer, and config checks."""

from __future__ import annotations

import json

import pytest
import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.engine.batch import IGNORE
from latentreason.errors import ConfigError
from latentreason.evaluation.solvers import TextSolver
from latentreason.layout import encode_problem
from latentreason.methods.saved import load_trained
from latentreason.methods.token_assorted import STAGE1_KEY, TokenAssortedConfig, mixed_sequence
from latentreason.model.code_tokens import CODE_TOKEN, first_code_id
from latentreason.model.vqvae import ChunkVQVAE, VectorQuantizer, chunk_batch, nearest_codes, straight_through
from latentreason.training.run import run_training
from tests.helpers import build_tiny_lm, tiny_train_config


def test_nearest_codes_match_a_loop_over_squared_distances():
    gen = torch.Generator().manual_seed(0)
    z, codebook = torch.randn(50, 6, generator=gen), torch.randn(9, 6, generator=gen)
    expected = []
    for vector in z:
        distances = [float(((vector - code) ** 2).sum()) for code in codebook]
        expected.append(distances.index(min(distances)))
    assert nearest_codes(z, codebook).tolist() == expected


def test_straight_through_passes_the_gradient_unchanged_and_losses_pull_the_right_side():
    quantizer = VectorQuantizer(5, 3)
    z = torch.randn(4, 3, requires_grad=True)
    out = quantizer(z)
    torch.testing.assert_close(out.decoder_input, quantizer.codebook.weight[out.codes])  # forward: the code
    upstream = torch.randn(4, 3)
    (out.decoder_input * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)  # backward: identity to the encoder
    assert quantizer.codebook.weight.grad is None  # the decoder's gradient never reaches the codebook
    z.grad = None
    out = quantizer(z)
    out.commitment_loss.backward()
    assert quantizer.codebook.weight.grad is None and z.grad.abs().sum() > 0  # commitment moves only the encoder
    out = quantizer(z.detach())
    out.codebook_loss.backward()
    assert quantizer.codebook.weight.grad[out.codes].abs().sum() > 0  # the codebook loss moves the chosen codes
    assert torch.equal(straight_through(z, z * 2), z * 2)


def test_dead_codes_restart_on_encoder_outputs():
    quantizer = VectorQuantizer(6, 2)
    z = torch.tensor([[5.0, 5.0], [-5.0, 5.0]])
    dead = torch.tensor([True, False, True, False, False, False])
    kept = quantizer.codebook.weight[~dead].clone()
    assert quantizer.restart(dead, z, torch.Generator().manual_seed(0)) == 2
    for row in quantizer.codebook.weight[dead]:
        assert any(torch.equal(row, candidate) for candidate in z)
    assert torch.equal(quantizer.codebook.weight[~dead], kept)


def test_chunk_batch_cuts_the_cot_at_exact_boundaries():
    prompts, cots = [[1, 2, 3], [4]], [[10, 11, 12, 13, 14], []]
    batch = chunk_batch(prompts, cots, chunk_length=2, pad_id=0)
    assert batch["chunk_of"].tolist() == [[-1, -1, -1, 0, 0, 1, 1, 2], [-1] * 7 + [-1]]
    assert batch["targets"].tolist() == [[10, 11], [12, 13], [14, 0]]  # the short last chunk padded
    assert batch["mask"][1].tolist() == [0] * 7 + [1]


def test_chunk_vectors_are_the_mean_over_each_chunk_and_independent_of_the_batch():
    torch.manual_seed(0)
    vqvae = ChunkVQVAE(vocab_size=20, chunk_length=3, codebook_size=8, hidden_size=8, num_layers=1, num_heads=2)
    prompts, cots = [[1, 2], [3, 4, 5, 6]], [[7, 8, 9, 10], [11, 12, 13]]
    both = chunk_batch(prompts, cots, 3, 0)
    alone = chunk_batch(prompts[1:], cots[1:], 3, 0)
    with torch.no_grad():
        vectors = vqvae.chunk_vectors(both["ids"], both["mask"], both["chunk_of"])  # [3, h]: 2 chunks + 1
        single = vqvae.chunk_vectors(alone["ids"], alone["mask"], alone["chunk_of"])
        torch.testing.assert_close(vectors[2:], single, atol=1e-5, rtol=1e-5)
        # The slow way: encode row 0 alone and average its outputs over each chunk by hand.
        row = chunk_batch(prompts[:1], cots[:1], 3, 0)
        x = vqvae.embed(row["ids"]) + vqvae.positions(torch.arange(6)[None])
        hidden = vqvae.encoder(x, src_key_padding_mask=~row["mask"].bool())[0]  # [6, h]
        torch.testing.assert_close(vectors[0], vqvae.to_latent(hidden[2:5].mean(0)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vectors[1], vqvae.to_latent(hidden[5:6].mean(0)), atol=1e-5, rtol=1e-5)


def test_mixed_sequence_replaces_whole_chunks_and_m_zero_is_plain_cot():
    lm = build_tiny_lm("llama")
    enc = encode_problem(lm.tokenizer, generate_chain(1, seed=3, num_steps=3)[0])
    length = 4
    chunks = -(-len(enc.cot) // length)
    codes = [1000 + k for k in range(chunks)]
    ids, labels = mixed_sequence(enc, codes, 0, length)
    assert ids == enc.prompt + enc.cot + enc.answer  # m = 0: CoT-SFT's sequence
    assert labels == [IGNORE] * len(enc.prompt) + enc.cot + enc.answer
    for m in range(1, chunks + 1):
        ids, labels = mixed_sequence(enc, codes, m, length)
        assert ids[: len(enc.prompt)] == enc.prompt
        assert ids[len(enc.prompt) : len(enc.prompt) + m] == codes[:m]
        assert ids[len(enc.prompt) + m :] == enc.cot[m * length :] + enc.answer
        assert labels[len(enc.prompt) :] == ids[len(enc.prompt) :]
    assert mixed_sequence(enc, codes, chunks, length)[0] == enc.prompt + codes + enc.answer  # all CoT as codes


def train(tmp_path, **overrides):
    values = dict(
        chunk_length=4,
        codebook_size=8,
        vq_hidden_size=16,
        vq_layers=1,
        vq_epochs=2.0,
        vq_batch_size=16,
        num_train_examples=64,
        max_steps=12,
        learning_rate=3e-3,
        logging_steps=1,
    )
    values.update(overrides)
    config = tiny_train_config(TokenAssortedConfig, tmp_path / "ta", **values)
    return run_training("token-assorted", config, progress=False)


def test_stage_one_adds_codes_and_stage_two_draws_every_mix_and_learns(tmp_path):
    result = train(tmp_path)
    log = [json.loads(line) for line in (tmp_path / "ta" / "log.jsonl").read_text().splitlines()]
    ce = [entry["ce"] for entry in log if "ce" in entry]
    assert sum(ce[-3:]) / 3 < sum(ce[:3]) / 3  # the LM's CE on the mixed sequences goes down
    lm, method = load_trained(str(result.final_dir), None, max_new_tokens=8)
    stage1 = lm.meta[STAGE1_KEY]
    assert stage1["steps"] == 8 and 1 <= stage1["codes_used"] <= 8  # 2 epochs of 64 rows in batches of 16
    first = first_code_id(lm.tokenizer, 8)
    assert lm.tokenizer.convert_ids_to_tokens(first + 7) == CODE_TOKEN.format(7)
    assert lm.embed.weight.shape[0] == len(lm.tokenizer)
    method.prepare(lm)
    problems = generate_chain(32, seed=5, num_steps=2)
    batch = method.collate(lm, problems)
    replaced = batch["codes"].tolist()
    assert min(replaced) == 0 and max(replaced) >= 2  # plain CoT and mixes with several codes
    for row, m in enumerate(replaced):
        ids = batch["input_ids"][row].tolist()
        assert sum(first <= t < first + 8 for t in ids) == m


def test_saved_model_answers_by_plain_decoding_and_batched_equals_one_at_a_time(tmp_path):
    result = train(tmp_path, max_steps=3)
    lm, method = load_trained(str(result.final_dir), None, max_new_tokens=10)
    method.prepare(lm)
    solver = method.solver(lm)
    problems = generate_chain(6, seed=7, num_steps=2)
    together = solver.solve(problems)
    one_by_one = [solver.solve([p])[0] for p in problems]
    summary = [(s.text, s.text_tokens, s.latent_tokens) for s in together]
    assert summary == [(s.text, s.text_tokens, s.latent_tokens) for s in one_by_one]
    plain = TextSolver(lm, 10).solve(problems)
    assert [(s.text, s.text_tokens) for s in together] == [(s.text, s.text_tokens) for s in plain]


def test_replies_count_code_tokens_as_latents_and_the_rest_as_text(tmp_path):
    result = train(tmp_path, max_steps=1)
    lm, method = load_trained(str(result.final_dir), None, max_new_tokens=10)
    method.prepare(lm)
    first, solver = method.first_code, method.solver(lm)
    text_ids = lm.tokenizer("<<1+2=3>>\n### 3", add_special_tokens=False)["input_ids"]
    ids = [first + 7, first] + text_ids + [lm.eos_id, lm.pad_id]
    text = lm.tokenizer.decode(ids, skip_special_tokens=True)
    assert "code" not in text and "### 3" in text
    solution = solver.solution(text, ids)
    assert solution.latent_tokens == 2
    assert solution.text_tokens == len(lm.tokenizer("<<1+2=3>>", add_special_tokens=False)["input_ids"])
    # Codes steered to come first: every generated token is code 3, counted as a latent.
    head = torch.nn.Linear(lm.embed.weight.shape[1], lm.embed.weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(lm.lm_head.weight)
        head.bias.zero_()
        head.bias[first + 3] = 1e4
    lm.model.lm_head = head
    out = solver.solve(generate_chain(2, seed=8, num_steps=2))
    assert [(s.latent_tokens, s.text_tokens) for s in out] == [(10, 0), (10, 0)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chunk_length", 0),
        ("codebook_size", 0),
        ("max_latent_chunks", -2),
        ("vq_epochs", 0.0),
        ("commitment_weight", -0.1),
        ("vq_hidden_size", 30),
    ],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TokenAssortedConfig(**{field: value})


def test_a_model_with_another_codebook_is_refused(tmp_path):
    result = train(tmp_path, max_steps=1)
    lm, _ = load_trained(str(result.final_dir), None, max_new_tokens=4)
    method_cls = type(_)
    with pytest.raises(ConfigError, match="codebook_size"):
        method_cls(TokenAssortedConfig(chunk_length=4, codebook_size=16)).prepare(lm)


def test_a_resumed_run_keeps_the_fitted_vqvae_and_its_codes(tmp_path):
    first = train(tmp_path, max_steps=2, save_steps=1)
    lm, method = load_trained(str(first.final_dir), None, max_new_tokens=4)
    method.prepare(lm)
    problems = generate_chain(8, seed=9, num_steps=2)
    encoded = [encode_problem(lm.tokenizer, p) for p in problems]
    resumed = train(tmp_path, max_steps=3, save_steps=1, resume_from_checkpoint="auto")
    assert resumed.global_step == 3
    again, method_again = load_trained(str(resumed.final_dir), None, max_new_tokens=4)
    method_again.prepare(again)
    assert again.meta[STAGE1_KEY] == lm.meta[STAGE1_KEY]  # stage 1 was not run a second time
    assert method_again.chunk_codes(again, encoded) == method.chunk_codes(lm, encoded)
    assert not any(p.requires_grad for p in again.heads["vqvae"].parameters())
