"""KaVa: eviction of the teacher's CoT cache, the KV matching loss, RoPE undone, GQA, training and solving."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from latentreason.data.generators.chain import generate_chain
from latentreason.engine.compat import cache_kwargs
from latentreason.engine.forward import new_cache
from latentreason.engine.jacobi import jacobi_latent_forward
from latentreason.errors import ConfigError
from latentreason.methods import kava as kava_module
from latentreason.methods.kava import KaVa, KaVaConfig, kv_matching_loss
from latentreason.methods.kava_eviction import eviction_scores, kept_positions
from latentreason.model.attention_access import eager_attention, unrotated_keys
from latentreason.model.build import problem_texts
from latentreason.model.latent_lm import LatentLM
from latentreason.model.tokenizer import train_tokenizer
from latentreason.training.run import run_training
from tests.helpers import TOKENIZER_VOCAB, build_tiny_lm, chain_problems, tiny_lm, tiny_train_config


def reference_scores(attentions, keys, cot, answers, lam):
    """The eviction score written from the formula, one row, KV head and CoT token at a time."""
    bsz, query_heads, length, _ = attentions.shape
    kv_heads = keys.shape[1]
    group = query_heads // kv_heads
    scores = torch.full((bsz, kv_heads, length), float("-inf"), dtype=torch.float64)
    for b in range(bsz):
        tokens = [j for j in range(length) if cot[b, j]]
        readers = [i for i in range(length) if answers[b, i]]
        for h in range(kv_heads):
            heads = range(h * group, (h + 1) * group)
            paid = {j: sum(float(attentions[b, q, i, j]) for q in heads for i in readers) for j in tokens}
            paid = {j: v / (len(readers) * group) for j, v in paid.items()}
            total = sum(paid.values())
            mean_cos = {}
            for j in tokens:
                sims = [float(torch.cosine_similarity(keys[b, h, j], keys[b, h, o], dim=0)) for o in tokens if o != j]
                mean_cos[j] = sum(sims) / len(sims) if sims else 0.0
            norm = sum(math.exp(-c) for c in mean_cos.values())
            for j in tokens:
                scores[b, h, j] = lam * paid[j] / total + (1 - lam) * math.exp(-mean_cos[j]) / norm
    return scores


def reference_kept(scores, cot, keep):
    """Per row and head: the `keep` best CoT positions, in sequence order."""
    kept = []
    for b in range(scores.shape[0]):
        tokens = [j for j in range(scores.shape[2]) if cot[b, j]]
        best = [sorted(tokens, key=lambda j: -float(scores[b, h, j]))[:keep] for h in range(scores.shape[1])]
        kept.append([sorted(positions) for positions in best])
    return kept


def test_eviction_scores_and_kept_positions_equal_a_per_head_loop_with_grouped_heads():
    gen = torch.Generator().manual_seed(0)
    bsz, query_heads, kv_heads, length, dim, keep = 3, 4, 2, 9, 5, 3
    attentions = torch.softmax(torch.randn(bsz, query_heads, length, length, generator=gen), dim=-1)
    keys = torch.randn(bsz, kv_heads, length, dim, generator=gen)
    cot = torch.zeros(bsz, length, dtype=torch.bool)
    answers = torch.zeros_like(cot)
    cot[0, 2:7], answers[0, 7:] = True, True  # prompt 0..1, CoT 2..6, answer 7..8
    cot[1, 4:6], answers[1, 6:] = True, True  # pads 0..1 then a 2-token CoT: fewer than `keep`
    cot[2, 1:8], answers[2, 8:] = True, True
    lam = 0.3
    expected = reference_scores(attentions.double(), keys.double(), cot, answers, lam)
    attentions[1, :, :2] = float("nan")  # eager attention's rows for pad queries (a fully masked softmax)
    scores = eviction_scores(attentions, keys, cot, answers, lam)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)
    positions, valid = kept_positions(scores, keep)
    for b, per_head in enumerate(reference_kept(expected, cot, keep)):
        for h, wanted in enumerate(per_head):
            assert positions[b, h][valid[b, h]].tolist() == wanted
    assert valid[1].sum(-1).tolist() == [2, 2] and valid[[0, 2]].all()  # pads and prompt never kept
    # The two KV heads read different query-head pairs: swapping the pairs swaps the importance.
    swapped = eviction_scores(attentions[:, [2, 3, 0, 1]], keys, cot, answers, 1.0)
    torch.testing.assert_close(swapped[:, [1, 0]], eviction_scores(attentions, keys, cot, answers, 1.0))


def test_kv_loss_equals_a_hand_computation_and_leaves_the_teacher_alone():
    def kv_matching_value(*args):
        return float(kv_matching_loss(*args).detach())

    student = torch.zeros(1, 1, 2, 2, requires_grad=True)
    teacher = torch.tensor([[[[0.5, 2.0], [3.0, 3.0]]]], requires_grad=True)
    valid = torch.tensor([[[True, False]]])  # the second slot has no teacher token
    # SmoothL1 (beta 1) of the valid slot: (0.5 * 0.5^2 + (2 - 0.5)) / 2 = 0.8125; MSE: (0.25 + 4) / 2 = 2.125.
    assert kv_matching_value([student], [teacher], [valid], "smooth_l1", False) == pytest.approx(0.8125)
    assert kv_matching_value([student], [teacher], [valid], "mse", False) == pytest.approx(2.125)
    spread = torch.tensor([0.5, 2.0]).std()  # of the valid teacher entries only
    normalised = kv_matching_loss([student], [teacher], [valid], "smooth_l1", True)
    assert float(normalised.detach()) == pytest.approx(0.8125 / float(spread))
    # Mean over pairs (a layer's keys and values): an exact match adds 0 and halves the mean.
    assert kv_matching_value([student, teacher], [teacher, teacher], [valid, valid], "mse", False) == 1.0625
    normalised.backward()
    assert teacher.grad is None and student.grad[0, 0, 0].abs().sum() > 0 and not student.grad[0, 0, 1].any()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_keys_before_rope_do_not_depend_on_the_position(model_type):
    lm = tiny_lm(model_type)
    ids = torch.tensor([[5, 6, 7], [5, 6, 7]])
    positions = torch.tensor([[0, 1, 2], [9, 10, 11]])
    cache = new_cache(lm)
    with torch.no_grad():
        lm.backbone(input_ids=ids, position_ids=positions, use_cache=True, **cache_kwargs(lm.backbone, cache))
    rotated = cache.layers[0].keys  # layer 0's keys come from the token embeddings alone
    assert (rotated[0] - rotated[1]).abs().max() > 1e-2
    plain = unrotated_keys(lm.backbone, rotated, positions)
    torch.testing.assert_close(plain[0], plain[1], rtol=1e-5, atol=1e-5)


def test_gpt2_keys_are_matched_as_cached():
    lm = tiny_lm("gpt2")
    keys = torch.randn(1, 2, 3, 16)
    assert unrotated_keys(lm.backbone, keys, torch.tensor([[4, 5, 6]])) is keys


def grouped_query_lm(dtype=torch.float32) -> LatentLM:
    """A tiny Llama with 4 query heads sharing 2 KV heads."""
    tokenizer = train_tokenizer(problem_texts(chain_problems()), vocab_size=TOKENIZER_VOCAB)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LatentLM(AutoModelForCausalLM.from_config(config).to(dtype).eval(), tokenizer)


def passes(method, lm, problems):
    """(latent batch, student pass cache, teacher pass cache, teacher attentions), no gradients."""
    latent_batch = method.collate(lm, problems)["latent_batch"]
    student_cache, teacher_cache = new_cache(lm), new_cache(lm)
    with torch.no_grad():
        student = jacobi_latent_forward(lm, latent_batch, method.thought_map(lm), 2, cache=student_cache)
        with eager_attention(lm.model):
            teacher = method.teacher_pass(
                lm, latent_batch.extras, output_attentions=True, **cache_kwargs(lm.backbone, teacher_cache)
            )
    return latent_batch, student, student_cache, teacher_cache, teacher.attentions


@torch.no_grad()
def layer0_keys(lm, embeds):
    """Llama layer 0's keys before RoPE written out: k_proj(input_layernorm(embeddings)), [B, Hkv, L, D]."""
    layer = lm.backbone.layers[0]
    keys = layer.self_attn.k_proj(layer.input_layernorm(embeds))
    return keys.view(*embeds.shape[:2], lm.model.config.num_key_value_heads, -1).transpose(1, 2)


def test_grouped_query_states_match_per_kv_head_at_the_kept_tokens_and_the_latent_slots():
    lm = grouped_query_lm()
    method = KaVa(KaVaConfig(num_latents=3, jacobi_iterations=2, use_projector=True))
    method.prepare(lm)
    lm.eval()
    problems = generate_chain(3, seed=2, num_steps=4, min_steps=2)
    latent_batch, student, student_cache, teacher_cache, attentions = passes(method, lm, problems)
    assert attentions[0].shape[1] == 4 and teacher_cache.layers[0].keys.shape[1] == 2
    teacher, valid = method.teacher_kept_states(lm, latent_batch, teacher_cache, attentions)
    assert teacher[0].shape == (3, 2, 3, 8) and bool(valid[0].all())  # every CoT here is longer than 3 tokens
    extras = latent_batch.extras
    expected = layer0_keys(lm, lm.embed(extras["teacher_ids"]))  # [B, 2, T, D]
    scores = eviction_scores(attentions[0], expected, extras["cot_mask"], extras["answer_mask"], 0.1)
    positions, _ = kept_positions(scores, 3)
    for b in range(3):
        for h in range(2):
            torch.testing.assert_close(teacher[0][b, h], expected[b, h, positions[b, h]], rtol=1e-4, atol=1e-5)
            assert all(extras["cot_mask"][b, positions[b, h]])
    mine = method.student_slot_states(lm, latent_batch, student_cache)
    torch.testing.assert_close(mine[0], layer0_keys(lm, student.latent_inputs), rtol=1e-4, atol=1e-5)
    assert lm.model.config._attn_implementation != "eager"  # restored after the teacher's call


def test_kept_teacher_states_do_not_depend_on_batch_composition():
    lm = build_tiny_lm("llama", dtype=torch.float64)
    method = KaVa(KaVaConfig(num_latents=10, jacobi_iterations=2))
    problems = [generate_chain(1, seed=3, num_steps=2)[0], generate_chain(1, seed=4, num_steps=5)[0]]

    def kept(batch_problems):
        latent_batch, _, _, teacher_cache, attentions = passes(method, lm, batch_problems)
        with torch.no_grad():
            return method.teacher_kept_states(lm, latent_batch, teacher_cache, attentions)

    alone, alone_valid = kept(problems[:1])
    batched, batched_valid = kept(problems)
    assert all(torch.equal(a, b[:1]) for a, b in zip(alone_valid, batched_valid))
    assert not alone_valid[0].all() and batched_valid[0][1].all()  # the short CoT leaves slots unmatched
    for one, both, valid in zip(alone, batched, alone_valid):
        torch.testing.assert_close(both[:1][valid], one[valid], rtol=1e-9, atol=1e-9)


def test_kava_trains_and_its_saved_model_answers_in_batches_as_one_by_one(tmp_path):
    config = tiny_train_config(
        KaVaConfig,
        tmp_path / "kava",
        num_latents=3,
        jacobi_iterations=2,
        max_steps=8,
        learning_rate=3e-3,
        num_eval_examples=4,
    )
    result = run_training("kava", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "kava" / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in log if "kv" in entry]
    assert steps[-1]["loss"] < steps[0]["loss"] and steps[-1]["kv"] < steps[0]["kv"]
    assert result.eval.latent_tokens == 3.0
    lm = LatentLM.from_pretrained(result.final_dir).eval()
    problems = generate_chain(5, seed=6, num_steps=2)
    solver = KaVa(config).solver(lm)
    batched = [s.text for s in solver.solve(problems)]
    assert batched == [solver.solve([p])[0].text for p in problems]


@pytest.mark.parametrize(
    "field, value",
    [("kv_loss", "l2"), ("eviction_lambda", 1.5), ("eviction_lambda", -0.1), ("kv_weight", -1.0)],
)
def test_bad_settings_name_their_field(field, value):
    with pytest.raises(ConfigError, match=field):
        KaVaConfig(**{field: value})


def test_a_model_without_attention_probabilities_is_named(monkeypatch):
    monkeypatch.setattr(kava_module, "eager_attention", lambda model: contextlib.nullcontext())  # sdpa stays on
    lm = tiny_lm("llama")
    method = KaVa(KaVaConfig(num_latents=2, jacobi_iterations=1))
    batch = method.collate(lm, generate_chain(2, seed=1, num_steps=2))
    with pytest.raises(ConfigError, match="LlamaForCausalLM returned no attention probabilities"), torch.no_grad():
        method.loss(lm, batch)
