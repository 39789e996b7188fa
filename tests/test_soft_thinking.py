"""Soft Thinking on the step engine: degenerate settings are greedy decoding, batched equals one row at a time
(noise included), the concept is the filtered mixture of embeddings, Cold Stop and the thinking budget; and
the row-keyed noise it draws from."""

from __future__ import annotations

import pytest
import torch

from latentreason.decoding import DecodeContext, Generation, decoder_from_args
from latentreason.decoding.soft_thinking import SoftThinkingConfig, SoftThinkingPolicy
from latentreason.engine.noise import row_dirichlet, row_gamma, row_normal
from latentreason.engine.sampling import Sampling, filtered_logprobs
from latentreason.engine.steps import EMBED, FORCED, TOKEN
from latentreason.errors import ConfigError
from tests.helpers import EXACT, MODEL_TYPES
from tests.test_steps import lm64, prompts_for


def context(lm, prompts, think_end, max_new_tokens=10, stop_ids=None, seeds=None) -> DecodeContext:
    rows = len(prompts)
    return DecodeContext(
        prompts=prompts,
        stop_ids=stop_ids or [len(lm.tokenizer) + 10],
        max_new_tokens=max_new_tokens,
        sampling=Sampling().rows(rows),
        seeds=torch.arange(rows) * 7 + 1 if seeds is None else seeds,
        think_start=[lm.bot_id],
        think_end=think_end,
    )


def batched_equals_one_row_at_a_time(lm, decoder, think_end, max_new_tokens) -> Generation:
    """Sampled rows (temperature 1, row seeds) decoded together and one by one: tokens, kinds and log-probs agree.
    Returns the batched generation."""
    prompts, seeds = prompts_for(lm), torch.tensor([3, 5, 8, 13])
    ctx = context(lm, prompts, think_end, max_new_tokens=max_new_tokens, seeds=seeds)
    ctx.sampling = Sampling(temperature=1.0).rows(4)
    together = decoder.generate(lm, ctx)
    for row, prompt in enumerate(prompts):
        one = context(lm, [prompt], think_end, max_new_tokens=max_new_tokens, seeds=seeds[row : row + 1])
        one.sampling = Sampling(temperature=1.0).rows(1)
        alone = decoder.generate(lm, one)
        assert alone.tokens(0) == together.tokens(row)
        assert torch.equal(alone.trace.kind[0], together.trace.kind[row])
        torch.testing.assert_close(alone.trace.logprobs[0], together.trace.logprobs[row], **EXACT)
    return together


def unused_token(lm, generation) -> int:
    """A token no row's greedy output contains: a think_end that greedy decoding never reaches."""
    seen = set(generation.trace.tokens.flatten().tolist())
    return next(t for t in range(len(lm.tokenizer)) if t not in seen)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("args", [{"top_k": 1}, {"temperature": 0.0}, {"max_topk": 1, "top_k": 0, "top_p": 1.0}])
def test_degenerate_soft_thinking_is_greedy_decoding(model_type, args):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    greedy = decoder_from_args("text").generate(lm, context(lm, prompts, [lm.eot_id]))
    end = unused_token(lm, greedy)
    soft = decoder_from_args("soft-thinking", args).generate(lm, context(lm, prompts, [end]))
    assert soft.trace.tokens.tolist() == greedy.trace.tokens.tolist()
    assert (soft.trace.kind == EMBED).all() and soft.soft_steps.tolist() == [10] * 4
    assert (greedy.trace.kind == TOKEN).all() and greedy.text_steps.tolist() == [10] * 4


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("noise", ["none", "dirichlet", "gumbel"])
def test_soft_thinking_batched_equals_one_row_at_a_time(model_type, noise):
    lm = lm64(model_type)
    decoder = decoder_from_args("soft-thinking", {"noise": noise, "temperature": 1.0, "max_thinking_steps": 4})
    end = lm.tokenizer("###", add_special_tokens=False)["input_ids"]
    together = batched_equals_one_row_at_a_time(lm, decoder, end, max_new_tokens=9)
    # Four soft steps, then the forced end of thinking, then text.
    assert (together.trace.kind[:, :4] == EMBED).all() and (together.trace.kind[:, 4 : 4 + len(end)] == FORCED).all()
    assert together.trace.tokens[:, 4 : 4 + len(end)].tolist() == [end] * 4


def test_the_concept_is_the_filtered_mixture_of_embeddings():
    lm = lm64("llama")
    config = SoftThinkingConfig(temperature=0.8, top_k=5, top_p=0.9, min_p=0.01, max_topk=3)
    policy = SoftThinkingPolicy(lm, config, context(lm, prompts_for(lm, 2), [lm.eot_id]))
    logits = torch.randn(2, lm.embed.weight.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = policy.concept(logits, torch.tensor([0, 1]))  # [2, d]
    # Dense reference: the filtered probabilities over the whole vocabulary, the 3 largest kept, renormalised.
    logp, ids = filtered_logprobs(logits, Sampling(0.8, 5, 0.9, 0.01).rows(2))
    dense = torch.zeros_like(logits).scatter(1, ids, logp.exp())  # [2, V]
    top = dense.topk(3, dim=-1)
    kept = torch.zeros_like(dense).scatter(1, top.indices, top.values)
    expected = (kept / kept.sum(-1, keepdim=True)) @ lm.embed.weight  # [2, d]
    torch.testing.assert_close(got, expected, **EXACT)


def test_cold_stop_ends_thinking_after_enough_confident_steps():
    lm = lm64("gpt2")
    prompts = prompts_for(lm, 3)
    end = lm.tokenizer("###", add_special_tokens=False)["input_ids"]
    always_calm = {"cold_stop_entropy": 1e9, "cold_stop_steps": 3}  # every step counts as confident
    out = decoder_from_args("soft-thinking", always_calm).generate(lm, context(lm, prompts, end, max_new_tokens=12))
    kinds = out.trace.kind
    assert (kinds[:, :2] == EMBED).all()  # the 3rd confident step is where thinking stops: its input is think_end
    assert (kinds[:, 2 : 2 + len(end)] == FORCED).all() and (kinds[:, 2 + len(end) :] == TOKEN).all()
    never = {"cold_stop_entropy": 0.0, "cold_stop_steps": 3}
    out = decoder_from_args("soft-thinking", never).generate(lm, context(lm, prompts, end, max_new_tokens=12))
    assert (out.trace.kind == EMBED).all()


def test_a_stop_token_while_thinking_ends_the_reply():
    lm = lm64("llama")
    prompts = prompts_for(lm, 3)
    greedy = decoder_from_args("text").generate(lm, context(lm, prompts, [lm.eot_id], max_new_tokens=8))
    stop = greedy.trace.tokens[1, 2].item()  # row 1's third greedy token
    ctx = context(lm, prompts, [unused_token(lm, greedy)], max_new_tokens=8, stop_ids=[stop])
    out = decoder_from_args("soft-thinking", {"top_k": 1}).generate(lm, ctx)
    ends = greedy.trace.tokens[1].tolist().index(stop) + 1
    assert out.tokens(1) == greedy.tokens(1)[:ends]


def test_decoder_arguments_are_checked_like_config_fields():
    with pytest.raises(ConfigError, match="unknown field 'topk'.*did you mean 'top_k'"):
        decoder_from_args("soft-thinking", {"topk": 3})
    with pytest.raises(ConfigError, match="noise"):
        decoder_from_args("soft-thinking", {"noise": "pink"})
    with pytest.raises(ConfigError, match="top_p"):
        decoder_from_args("soft-thinking", {"top_p": 0})
    with pytest.raises(ConfigError, match="unknown decoder 'soft'"):
        decoder_from_args("soft")


# --- the noise ----------------------------------------------------------------------------------------


def test_row_noise_has_the_right_moments_and_ignores_the_batch():
    seeds, counters = torch.arange(4000), torch.zeros(4000, dtype=torch.long)
    normal = row_normal(seeds, counters, 3, 5)
    assert abs(normal.mean().item()) < 0.03 and abs(normal.std().item() - 1) < 0.03
    for shape in (0.3, 1.0, 5.0):
        gamma = row_gamma(torch.full((4000, 5), shape), seeds, counters, 3)
        assert (gamma > 0).all()
        assert abs(gamma.mean().item() / shape - 1) < 0.05 and abs(gamma.var().item() / shape - 1) < 0.12, shape
    assert torch.equal(
        row_gamma(torch.full((1, 5), 0.3), seeds[7:8], counters[7:8], 3),
        row_gamma(torch.full((4000, 5), 0.3), seeds, counters, 3)[7:8],
    )
    concentration = torch.tensor([[2.0, 1.0, 0.5, 0.0]]).expand(4000, -1)
    draws = row_dirichlet(concentration, seeds, counters, 4)
    assert torch.allclose(draws.sum(-1), torch.ones(4000, dtype=torch.float64)) and (draws[:, 3] == 0).all()
    torch.testing.assert_close(
        draws.mean(0), torch.tensor([4 / 7, 2 / 7, 1 / 7, 0.0], dtype=torch.float64), atol=0.01, rtol=0
    )
