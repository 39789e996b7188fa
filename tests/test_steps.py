"""The step engine: per-row sampling and its random draws, forced tokens, mixed token/embedding rows, rows
leaving the batch, one prefill shared by N samples, and the trace. Models are float64 where outputs are
compared, so "equal" is `EXACT` or token for token."""

from __future__ import annotations

import pytest
import torch

from latentreason.engine.batch import left_pad
from latentreason.engine.decode import TokenPolicy, decode, decode_from
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.engine.sampling import (
    RowSampling,
    Sampling,
    filtered_logprobs,
    row_seeds,
    row_uniform,
    sample_tokens,
)
from latentreason.engine.steps import EMBED, FORCED, NONE, TOKEN, StepChoice, prefill, run_steps
from latentreason.errors import ConfigError
from latentreason.layout import encode_problem
from tests.helpers import EXACT, MODEL_TYPES, build_tiny_lm, chain_problems

_MODELS: dict = {}


def lm64(model_type: str = "llama"):
    if model_type not in _MODELS:
        _MODELS[model_type] = build_tiny_lm(model_type, dtype=torch.float64)
    return _MODELS[model_type]


def prompts_for(lm, n: int = 4) -> list[list[int]]:
    prompts = [encode_problem(lm.tokenizer, p).prompt for p in chain_problems(n, seed=5)]
    prompts[1] = prompts[1][:4]  # rows of clearly different lengths: left padding varies
    return prompts


def no_stop(lm) -> list[int]:
    return [len(lm.tokenizer) + 10]


def answers(out) -> list[list[int]]:
    return [row[:n] for row, n in zip(out.tokens.tolist(), out.lengths.tolist())]


# --- random draws ------------------------------------------------------------------------------------


def splitmix_reference(seed: int, counter: int, stream: int, index: int) -> float:
    """row_uniform for one entry, in plain Python integers modulo 2^64."""
    mask = (1 << 64) - 1

    def mix(x):
        x &= mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    golden = 0x9E3779B97F4A7C15
    key = mix(mix(seed + stream * golden) + counter * golden)
    return ((mix(key + index * golden) >> 11) + 0.5) * 2.0**-53


def test_row_uniform_is_the_counter_based_generator_it_claims():
    seeds, counters = torch.tensor([0, 7, 2**62 - 1, 12345]), torch.tensor([0, 3, 99, 5])
    got = row_uniform(seeds, counters, stream=2, n=3)
    for r in range(4):
        for i in range(3):
            assert got[r, i].item() == splitmix_reference(int(seeds[r]), int(counters[r]), 2, i + 1)


def test_row_uniform_draws_depend_only_on_their_own_row():
    seeds = torch.tensor([11, 12, 13, 14])
    together = row_uniform(seeds, torch.tensor([4, 4, 4, 4]), 0, 5)
    alone = row_uniform(seeds[2:3], torch.tensor([4]), 0, 5)
    assert torch.equal(together[2:3], alone)
    # Uniform enough: 20000 draws have the mean and spread of U(0, 1) and fill ten equal bins evenly.
    many = row_uniform(torch.arange(2000), torch.zeros(2000, dtype=torch.long), 0, 10).flatten()
    assert 0 < many.min() and many.max() < 1
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.003
    counts = torch.histc(many.float(), bins=10, min=0, max=1)
    assert ((counts - 2000).abs() < 200).all(), counts.tolist()


def test_row_seeds_key_on_content_and_sample():
    a = row_seeds(0, ["q1", "q2"], samples=2)
    assert a.shape == (4,) and len(set(a.tolist())) == 4
    assert torch.equal(row_seeds(0, ["q2"], samples=2), a[2:])  # the same problem, wherever it sits
    assert not torch.equal(row_seeds(1, ["q1"]), a[:1])


# --- token sampling --------------------------------------------------------------------------------


def settings(*rows: Sampling) -> RowSampling:
    return RowSampling.stack(list(rows))


def test_filters_keep_what_the_soft_thinking_order_keeps():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()  # p, already normalised
    cases = {
        Sampling(temperature=1.0): 4,
        Sampling(temperature=1.0, top_k=3): 3,
        Sampling(temperature=1.0, top_p=0.8): 2,  # 0.5 + 0.3 reaches 0.8: the third is not needed
        Sampling(temperature=1.0, top_p=0.81): 3,
        Sampling(temperature=1.0, min_p=0.2): 3,  # drops p < 0.1
        Sampling(temperature=1.0, top_k=3, min_p=0.4): 2,
        Sampling(temperature=0.0): 1,
    }
    for sampling, kept in cases.items():
        logp, ids = filtered_logprobs(logits, settings(sampling))
        assert int(torch.isfinite(logp).sum()) == kept, sampling
        assert abs(logp.exp().sum().item() - 1) < 1e-6
    logp, ids = filtered_logprobs(logits, settings(Sampling(temperature=1.0, top_p=0.8)))
    kept = torch.isfinite(logp)
    torch.testing.assert_close(logp[kept].exp(), torch.tensor([0.5, 0.3]) / 0.8)
    assert ids[kept].tolist() == [0, 1]


def test_sampling_frequencies_follow_the_filtered_distribution():
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(0)) * 2
    sampling = Sampling(temperature=0.7, top_k=6, top_p=0.9)
    n = 6000
    ids, logprobs = sample_tokens(
        logits.expand(n, -1), sampling.rows(n), torch.arange(n), torch.zeros(n, dtype=torch.long)
    )
    logp, cand = filtered_logprobs(logits, settings(sampling))
    expected = torch.zeros(12, dtype=torch.float64).scatter(0, cand[0], logp[0].exp().double())
    freq = torch.bincount(ids, minlength=12).double() / n
    assert (freq[expected == 0] == 0).all()  # never a filtered-out token
    assert (freq - expected).abs().max() < 0.025, (freq, expected)
    torch.testing.assert_close(logprobs.double(), expected[ids].log(), atol=1e-6, rtol=1e-6)


def test_greedy_rows_and_sampled_rows_share_a_batch_without_affecting_each_other():
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(1))
    mixed = settings(Sampling(), Sampling(temperature=1.0, top_p=0.9), Sampling(temperature=1.0, top_k=1))
    seeds, counters = torch.tensor([5, 6, 7]), torch.tensor([0, 2, 1])
    ids, logprobs = sample_tokens(logits, mixed, seeds, counters)
    assert ids[0] == logits[0].argmax() and ids[2] == logits[2].argmax()
    for row in range(3):
        alone, lp = sample_tokens(
            logits[row : row + 1], mixed.take(torch.tensor([row])), seeds[row : row + 1], counters[row : row + 1]
        )
        assert alone.item() == ids[row].item() and lp.item() == pytest.approx(logprobs[row].item())


@pytest.mark.parametrize(
    "field, value", [("temperature", -1.0), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 2.0)]
)
def test_bad_sampling_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        Sampling(**{field: value})


# --- decoding on the step engine ----------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_sampled_answer_does_not_depend_on_its_batch(model_type):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    batch = left_pad(prompts, lm.pad_id)
    sampling = Sampling(temperature=1.3, top_p=0.95)
    seeds = row_seeds(3, [str(p) for p in prompts])
    together = decode(lm, batch["input_ids"], batch["attention_mask"], 10, [lm.eos_id], sampling, seeds)
    for row, prompt in enumerate(prompts):
        one = left_pad([prompt], lm.pad_id)
        alone = decode(lm, one["input_ids"], one["attention_mask"], 10, [lm.eos_id], sampling, seeds[row : row + 1])
        assert answers(alone)[0] == answers(together)[row]
        torch.testing.assert_close(alone.logprobs[0], together.logprobs[row, : alone.tokens.shape[1]], **EXACT)
    greedy = decode(lm, batch["input_ids"], batch["attention_mask"], 10, [lm.eos_id])
    assert answers(together) != answers(greedy)  # the sampling was real


def count_calls(lm) -> list[int]:
    """The batch size of every backbone call from now on (a forward hook; removed by the caller's `.remove()`)."""
    sizes: list[int] = []

    def hook(module, args, kwargs):
        inputs = kwargs.get("input_ids")
        sizes.append(int((inputs if inputs is not None else kwargs["inputs_embeds"]).shape[0]))

    handle = lm.backbone.register_forward_pre_hook(hook, with_kwargs=True)
    return sizes, handle


def test_finished_rows_leave_the_batch_and_the_rest_are_unchanged():
    lm = lm64("gpt2")
    batch = left_pad(prompts_for(lm), lm.pad_id)
    free = decode(lm, batch["input_ids"], batch["attention_mask"], 12, no_stop(lm))
    # A stop token that ends row 0 early and no other row before the end.
    row0 = free.tokens[0].tolist()
    stop = next(t for i, t in enumerate(row0[:6]) if all(t not in r[:11] for r in free.tokens[1:].tolist()))
    sizes, handle = count_calls(lm)
    try:
        out = decode(lm, batch["input_ids"], batch["attention_mask"], 12, [stop])
    finally:
        handle.remove()
    ends = row0.index(stop) + 1
    assert out.lengths.tolist() == [ends, 12, 12, 12]
    assert answers(out)[1:] == [r for r in free.tokens[1:].tolist()]
    # The prefill and `ends - 1` steps with 4 rows, then 3 rows: row 0 no longer rides along.
    assert sizes == [4] * ends + [3] * (11 - (ends - 1))


def test_samples_share_one_prefill_and_equal_separate_runs():
    lm = lm64("qwen2")
    prompts = prompts_for(lm, 3)
    sampling = Sampling(temperature=1.0)
    seeds = torch.arange(6) * 17
    sizes, handle = count_calls(lm)
    try:
        prefix = prefill(lm, prompts, samples=2)
    finally:
        handle.remove()
    assert sizes == [3]  # one call over the 3 prompts, not 6
    shared = decode_from(lm, prefix, 8, [lm.eos_id], sampling, seeds)
    repeated = [p for p in prompts for _ in range(2)]
    batch = left_pad(repeated, lm.pad_id)
    separate = decode(lm, batch["input_ids"], batch["attention_mask"], 8, [lm.eos_id], sampling, seeds)
    assert answers(shared) == answers(separate)
    torch.testing.assert_close(shared.logprobs, separate.logprobs, **EXACT)
    assert answers(shared)[0] != answers(shared)[1] or answers(shared)[2] != answers(shared)[3]


def test_latent_rollout_samples_share_one_prefill():
    lm = lm64("llama")
    prompts = [p + [lm.bot_id] for p in prompts_for(lm, 2)]
    scaled = lambda hidden, j: (hidden * 0.5, None)  # noqa: E731
    shared = latent_rollout(lm, prompts, scaled, fixed_latents(2), 2, 6, samples=3)
    alone = latent_rollout(lm, [p for p in prompts for _ in range(3)], scaled, fixed_latents(2), 2, 6)
    assert answers(shared) == answers(alone)
    torch.testing.assert_close(shared.latent_inputs, alone.latent_inputs, **EXACT)


class ForceAfter:
    """Greedy decoding that, at step `at`, forces `text` on the rows in `rows` (view positions)."""

    def __init__(self, lm, batch, at, rows, text):
        self.tokens = TokenPolicy(batch, lm.device, no_stop(lm), 100)
        self.at, self.rows, self.text = at, rows, text

    def step(self, view):
        if view.t == self.at:
            view.force(torch.tensor(self.rows), self.text)
        return self.tokens.step(view)


def test_forced_tokens_replace_the_choice_and_the_continuation_sees_them():
    lm = lm64("llama")
    prompts = prompts_for(lm, 3)
    text = lm.tokenizer("### 7", add_special_tokens=False)["input_ids"]
    policy = ForceAfter(lm, 3, at=2, rows=[1], text=text)
    trace = run_steps(lm, prefill(lm, prompts), policy, 10)
    free = decode_from(lm, prefill(lm, prompts), 10, no_stop(lm))
    assert trace.kind[1, 2 : 2 + len(text)].tolist() == [FORCED] * len(text)
    assert trace.tokens[1, 2 : 2 + len(text)].tolist() == text
    assert (trace.kind[[0, 2]] == TOKEN).all() and trace.tokens[[0, 2]].tolist() == free.tokens[[0, 2]].tolist()
    # Row 1 continues exactly as greedy decoding of its prompt + its first 2 tokens + the forced text.
    given = prompts[1] + trace.tokens[1, :2].tolist() + text
    rest = decode_from(lm, prefill(lm, [given]), 10 - 2 - len(text), no_stop(lm))
    assert trace.tokens[1, 2 + len(text) :].tolist() == rest.tokens[0].tolist()
    assert (trace.logprobs[1, 2 : 2 + len(text)] == 0).all()  # forced tokens are not the policy's actions


class EmbedTopOne:
    """Greedy decoding in which the rows in `soft` feed the embedding of their top-1 token instead of the id
    (Soft Thinking with top-k 1): the outputs must equal plain greedy decoding."""

    def __init__(self, lm, soft):
        self.lm, self.soft = lm, soft

    def step(self, view):
        top = view.logits.argmax(-1)  # [b]
        is_embed = torch.tensor([int(r) in self.soft for r in view.rows])
        return StepChoice(top, self.lm.embed(top), is_embed, finished=torch.zeros_like(is_embed))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rows_mixing_embeddings_and_tokens_equal_plain_decoding(model_type):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    trace = run_steps(lm, prefill(lm, prompts), EmbedTopOne(lm, soft={0, 2}), 8, stats=True, keep_hidden=True)
    free = decode_from(lm, prefill(lm, prompts), 8, no_stop(lm), stats=True)
    assert trace.tokens.tolist() == free.tokens.tolist()
    assert (trace.kind[[0, 2]] == EMBED).all() and (trace.kind[[1, 3]] == TOKEN).all()
    torch.testing.assert_close(trace.entropy, free.trace.entropy, **EXACT)
    assert torch.equal(trace.top1, free.tokens)
    # The kept hidden state is the one each step was chosen from: its LM head gives the recorded top-1.
    assert torch.equal(lm.lm_head(trace.hidden).argmax(-1), trace.top1)


def test_trace_packs_steps_of_one_kind_and_counts_them():
    lm = lm64("llama")
    prompts = [p + [lm.bot_id] for p in prompts_for(lm, 3)]
    out = latent_rollout(lm, prompts, lambda h, j: (h, None), fixed_latents(torch.tensor([2, 0, 3])), 3, 4)
    assert out.num_latents.tolist() == [2, 0, 3]
    assert (out.latent_inputs[0, 2:] == 0).all() and (out.latent_inputs[2] != 0).any()
    trace = out.trace
    assert torch.equal(trace.count(EMBED), out.num_latents) and trace.count(FORCED).tolist() == [1, 1, 1]
    assert torch.equal(trace.steps, out.num_latents + 1 + out.lengths)
    tokens, logprobs, lengths = trace.packed(TOKEN, lm.pad_id)
    assert torch.equal(tokens, out.tokens) and torch.equal(lengths, out.lengths)
    eot_at = trace.kind.eq(FORCED).int().argmax(1)  # [B]
    assert trace.tokens[torch.arange(3), eot_at].tolist() == [lm.eot_id] * 3 and eot_at.tolist() == [2, 0, 3]


def test_no_steps_leaves_the_prefix_as_the_state():
    lm = lm64("llama")
    prefix = prefill(lm, prompts_for(lm, 2))
    trace = run_steps(lm, prefix, TokenPolicy(2, lm.device, [lm.eos_id], 5), 0)
    assert trace.kind.shape == (2, 0) and trace.state is prefix and (trace.kind == NONE).all()
