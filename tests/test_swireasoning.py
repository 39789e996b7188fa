"""SwiReasoning on the step engine: the degenerate setting is greedy decoding, batched equals one row at a time,
the switch rule and its window (on scripted entropies), the switch budget, the blended switch inputs, the
latent input, math tokens, the row's own end of thinking; and a smoke run on SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

from latentreason.decoding import decoder_from_args
from latentreason.decoding.swireasoning import MATH_CHARS, SwiReasoningConfig, SwiReasoningPolicy, math_tokens, switches
from latentreason.engine.mixture import topk_mixture
from latentreason.engine.steps import EMBED, FORCED, NONE, TOKEN, StepView, prefill, run_steps
from latentreason.errors import ConfigError
from tests.helpers import EXACT, MODEL_TYPES
from tests.test_smollm import needs_smollm2
from tests.test_soft_thinking import batched_equals_one_row_at_a_time, context
from tests.test_steps import lm64, prompts_for

# Every soft input is the argmax's embedding and the switch blends are off: whatever the switches, greedy.
DEGENERATE = {"latent_top_k": 1, "alpha0": 1.0, "beta0": 1.0, "window_size": 2}


def script_entropy(monkeypatch, per_row: list[list[float]]) -> None:
    """Make the switch rule read these entropies ([B][T]: row, step) instead of the model's."""
    script = torch.tensor(per_row, dtype=torch.float32).T  # [T, B]
    monkeypatch.setattr(StepView, "entropy", property(lambda view: script[view.t][view.rows]))


def recorded_run(lm, config: SwiReasoningConfig, ctx):
    """(trace, per step: (view.t, rows, logits, the choice, the policy's modes [B] after the step), policy)."""
    policy = SwiReasoningPolicy(lm, config, ctx)
    steps = []

    class Recorder:
        def step(self, view):
            choice = policy.step(view)
            steps.append((view.t, view.rows.clone(), view.logits, choice, policy.latent.clone()))
            return choice

    trace = run_steps(lm, prefill(lm, ctx.prompts), Recorder(), ctx.max_new_tokens, batch_size=ctx.rows)
    return trace, steps, policy


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_degenerate_swireasoning_is_greedy_decoding(model_type):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    greedy = decoder_from_args("text").generate(lm, context(lm, prompts, [lm.eot_id], max_new_tokens=16))
    swi = decoder_from_args("swireasoning", DEGENERATE).generate(
        lm, context(lm, prompts, [lm.eot_id], max_new_tokens=16)
    )
    assert swi.trace.tokens.tolist() == greedy.trace.tokens.tolist()
    torch.testing.assert_close(swi.trace.logprobs, greedy.trace.logprobs, **EXACT)
    # The rows did switch: latent (embedding) and explicit (token) steps both occur in each.
    assert (swi.soft_steps > 0).all() and (swi.text_steps > 0).all()
    assert (swi.soft_steps + swi.text_steps).tolist() == [16] * 4


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_swireasoning_batched_equals_one_row_at_a_time(model_type):
    lm = lm64(model_type)
    args = {"latent_top_k": 5, "alpha0": 0.4, "window_size": 2, "max_switches": 1, "answer_prompt": "###"}
    decoder = decoder_from_args("swireasoning", {**args, "answer_tokens": 3})
    end = lm.tokenizer("<<###", add_special_tokens=False)["input_ids"]  # two tokens
    together = batched_equals_one_row_at_a_time(lm, decoder, end, max_new_tokens=20)
    kinds = together.trace.kind
    assert (kinds == EMBED).any() and (kinds == TOKEN).any() and (kinds == FORCED).any()


def test_the_switch_rule():
    latent = torch.tensor([True, True, False, False, False])
    entropy = torch.tensor([1.0, 3.0, 3.0, 3.0, 1.0])
    reference = torch.full((5,), 2.0)
    stay = torch.tensor([0, 0, 4, 3, 9])
    to_explicit, to_latent = switches(latent, entropy, reference, stay, window=4)
    # Latent -> explicit as soon as the entropy falls below H_ref; back only after the window, on a rise.
    assert to_explicit.tolist() == [True, False, False, False, False]
    assert to_latent.tolist() == [False, False, True, False, False]


def test_modes_follow_the_entropy_trend_and_the_window(monkeypatch):
    lm = lm64("llama")
    script_entropy(
        monkeypatch,
        [
            [5, 4, 6, 6, 6, 7, 5, 3],  # explicit at 1; the rise at 2-3 waits for the window (3); latent at 4
            [2, 2, 2, 2, 2, 2, 2, 2],  # no fall below H_ref: latent throughout
            [1, 2, 0.5, 9, 9, 9, 9, 9],  # a rise while latent changes nothing; explicit at 2, latent at 5
        ],
    )
    config = SwiReasoningConfig(window_size=3, math_chars="")
    trace, steps, policy = recorded_run(lm, config, context(lm, prompts_for(lm, 3), [lm.eot_id], max_new_tokens=8))
    modes = torch.stack([latent for *_, latent in steps], dim=1)  # [B, T] latent after each step
    L, E = True, False
    assert modes.tolist() == [[L, E, E, E, L, L, E, E], [L] * 8, [L, L, E, E, E, L, L, L]]
    # A latent step and a switch step feed an embedding, an explicit step its token.
    assert trace.kind.tolist() == [
        [EMBED, EMBED, TOKEN, TOKEN, EMBED, EMBED, EMBED, TOKEN],
        [EMBED] * 8,
        [EMBED, EMBED, EMBED, TOKEN, TOKEN, EMBED, EMBED, EMBED],
    ]
    assert policy.switched.tolist() == [2, 0, 1]
    assert policy.reference.tolist() == [5, 2, 9]  # the entropy at each row's last switch


def test_the_switch_budget_forces_the_end_of_thinking_then_the_answer(monkeypatch):
    lm = lm64("llama")
    hashes = lm.tokenizer("###", add_special_tokens=False)["input_ids"]
    end = [lm.eot_id, *hashes]  # two tokens: the first is detected, all are forced
    x = 100.0  # a forced step: its entropy, which would switch the row back to latent, is not read
    script_entropy(
        monkeypatch,
        [
            # switch 1 (nudge) at 1, latent at 3, switch 2 (nudge) at 4, latent at 6, switch 3 (> 2C) at 7
            [5, 4, x, 9, 8, x, 10, 1] + [x] * 8,
            [2] * 16,  # never switches
        ],
    )
    config = SwiReasoningConfig(window_size=1, max_switches=1, answer_prompt="###", answer_tokens=3, math_chars="")
    ctx = context(lm, prompts_for(lm, 2), end, max_new_tokens=16)
    trace, _, policy = recorded_run(lm, config, ctx)
    kinds, tokens = trace.kind[0].tolist(), trace.tokens[0].tolist()
    assert kinds[:7] == [EMBED, FORCED, FORCED, EMBED, FORCED, FORCED, EMBED]
    assert tokens[1:3] == end and tokens[4:6] == end
    final = end + hashes  # think_end, then answer_prompt
    assert kinds[7:10] == [FORCED] * 3 and tokens[7:10] == final
    # answer_tokens more, then the row has ended.
    assert kinds[10:] == [TOKEN] * 3 + [NONE] * 3
    assert policy.switched.tolist() == [3, 0] and policy.locked.tolist() == [True, False]
    assert trace.kind[1].tolist() == [EMBED] * 16


def test_a_budget_of_zero_answers_at_the_first_switch(monkeypatch):
    lm = lm64("gpt2")
    script_entropy(monkeypatch, [[5, 5, 4] + [0.0] * 13] * 2)
    config = SwiReasoningConfig(max_switches=0, answer_prompt="###", math_chars="")
    trace, steps, _ = recorded_run(lm, config, context(lm, prompts_for(lm, 2), [lm.eot_id], max_new_tokens=16))
    answer = lm.tokenizer("###", add_special_tokens=False)["input_ids"]
    assert trace.kind[0, :5].tolist() == [EMBED, EMBED, FORCED, FORCED, TOKEN]
    assert trace.tokens[0, 2:4].tolist() == [lm.eot_id, *answer]
    assert SwiReasoningConfig().answer_tokens == 32  # the reference's allowance (here cut by max_new_tokens)
    # A stop token chosen at the switch ends the row: nothing is forced after it.
    stop = steps[2][3].tokens[0].item()
    ctx = context(lm, prompts_for(lm, 2), [lm.eot_id], max_new_tokens=16, stop_ids=[stop])
    trace, _, _ = recorded_run(lm, config, ctx)
    assert (trace.kind[0, 3:] == NONE).all() and (trace.kind[0] != FORCED).all()


def test_switch_inputs_blend_the_latent_input_with_the_markers(monkeypatch):
    lm = lm64("qwen2")
    script_entropy(monkeypatch, [[5, 4, 6, 6] + [7] * 6] * 2)  # explicit at 1, latent again at 3 (window 2)
    vocab = lm.embed.weight.shape[0]
    config = SwiReasoningConfig(window_size=2, alpha0=0.3, beta0=0.6, latent_top_k=vocab, math_chars="")
    ctx = context(lm, prompts_for(lm, 2), [lm.eot_id], max_new_tokens=10)
    ctx.think_start = lm.tokenizer("A", add_special_tokens=False)["input_ids"]  # bot_id's row equals eot_id's
    trace, steps, _ = recorded_run(lm, config, ctx)
    assert trace.kind[0, :5].tolist() == [EMBED, EMBED, TOKEN, EMBED, EMBED]
    matrix = lm.embed.weight  # [V, d] the dense p @ E, in the test only

    def soft(t):
        return steps[t][2].to(matrix.dtype).softmax(-1) @ matrix  # [1, d]

    alpha_3 = 0.3 + 0.7 * 3 / 10  # annealed from alpha0 to 1 at max_new_tokens
    beta_1 = 0.6 + 0.4 * 1 / 10
    start, end = matrix[ctx.think_start[0]], matrix[ctx.think_end[0]]
    torch.testing.assert_close(steps[0][3].embeds, soft(0), **EXACT)  # plain latent
    torch.testing.assert_close(steps[1][3].embeds, beta_1 * soft(1) + (1 - beta_1) * end, **EXACT)
    torch.testing.assert_close(steps[3][3].embeds, alpha_3 * soft(3) + (1 - alpha_3) * start, **EXACT)
    torch.testing.assert_close(steps[4][3].embeds, soft(4), **EXACT)


def test_the_latent_input_mixes_the_top_k_tokens_renormalised():
    lm = lm64("llama")
    vocab = lm.embed.weight.shape[0]
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    top3 = topk_mixture(lm.embed, logits, 3)  # [2, d]: what SwiReasoning feeds with latent_top_k 3
    kept = logits.topk(3, dim=-1)
    p = torch.zeros_like(logits).scatter(1, kept.indices, kept.values.softmax(-1))  # [2, V]
    torch.testing.assert_close(top3, p @ lm.embed.weight, **EXACT)
    exact = topk_mixture(lm.embed, logits, 10**6)
    torch.testing.assert_close(exact, logits.softmax(-1) @ lm.embed.weight, **EXACT)


def test_math_tokens_are_always_fed_as_text(monkeypatch):
    lm = lm64("llama")
    mask = math_tokens(lm.tokenizer, MATH_CHARS, lm.embed.weight.shape[0], "cpu")
    vocab = lm.tokenizer.get_vocab()
    for token, is_math in [("7", True), ("Ġ*", True), ("<<", True), ("###", False), ("a", False), ("Ġ", False)]:
        assert mask[vocab[token]] == is_math, token
    assert not mask[lm.eos_id] and not mask[lm.eot_id]
    script_entropy(monkeypatch, [[3.0] * 12] * 4)  # never a fall: every row stays latent
    ctx = context(lm, prompts_for(lm), [lm.eot_id], max_new_tokens=12)
    plain, _, _ = recorded_run(lm, SwiReasoningConfig(math_chars=""), ctx)
    assert (plain.kind == EMBED).all()
    digits, steps, _ = recorded_run(lm, SwiReasoningConfig(math_chars="0123456789"), ctx)
    text = [[lm.tokenizer.decode([t]).strip() for t in row] for row in digits.tokens.tolist()]
    is_digit = torch.tensor([[token.isdigit() for token in row] for row in text])
    assert torch.equal(digits.kind == TOKEN, is_digit) and (digits.kind != FORCED).all()
    assert is_digit.any() and not is_digit.all()
    assert all(latent.all() for *_, latent in steps)  # a math token does not change the mode


def test_the_rows_own_end_of_thinking_keeps_it_explicit():
    lm = lm64("llama")
    prompts = prompts_for(lm)
    greedy = decoder_from_args("text").generate(lm, context(lm, prompts, [lm.eot_id], max_new_tokens=16))
    mark = greedy.trace.tokens[1, 3].item()  # row 1's fourth greedy token ends thinking
    args = {**DEGENERATE, "window_size": 0, "math_chars": ""}  # rows go back latent at the first rise
    free = decoder_from_args("swireasoning", args).generate(lm, context(lm, prompts, [lm.eot_id], max_new_tokens=16))
    assert (free.trace.kind[1, 6:] == EMBED).any()
    end = [mark, lm.eot_id]
    out = decoder_from_args("swireasoning", args).generate(lm, context(lm, prompts, end, max_new_tokens=16))
    checked = []
    for row in range(4):
        kinds, tokens = out.trace.kind[row].tolist(), out.trace.tokens[row].tolist()
        if mark not in tokens[:14]:
            continue
        at = tokens.index(mark)  # the rows equal greedy decoding up to here
        assert tokens[: at + 1] == greedy.tokens(row)[: at + 1]
        assert tokens[at : at + 2] == end and kinds[at : at + 2] == [FORCED, FORCED]
        assert set(kinds[at + 2 :]) == {TOKEN}, row
        checked.append(row)
    assert 1 in checked


def test_decoder_arguments_are_checked_like_config_fields():
    with pytest.raises(ConfigError, match="unknown field 'window'.*did you mean 'window_size'"):
        decoder_from_args("swireasoning", {"window": 3})
    for args, field in [
        ({"alpha0": 1.5}, "alpha0"),
        ({"beta0": -0.1}, "beta0"),
        ({"window_size": -1}, "window_size"),
        ({"max_switches": -1}, "max_switches"),
        ({"answer_tokens": 0}, "answer_tokens"),
        ({"latent_top_k": 0}, "latent_top_k"),
    ]:
        with pytest.raises(ConfigError, match=field):
            decoder_from_args("swireasoning", args)
    assert decoder_from_args("swireasoning", {"max_switches": None}).config.max_switches is None


# --- the real model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from latentreason.model.latent_lm import LatentLM
    from latentreason.model.smollm import load_smollm2

    model, tokenizer = load_smollm2()
    return LatentLM(model, tokenizer)


@needs_smollm2
def test_swireasoning_on_smollm2(smollm2):
    lm = smollm2
    tokenizer = lm.tokenizer
    questions = ["What is 12 + 7?", "Tom has 3 apples and buys 5 more. How many apples does he have?"]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in questions
    ]
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    start, end = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("<think>", "</think>"))

    def ctx(max_new_tokens=30):
        out = context(lm, prompts, end, max_new_tokens=max_new_tokens, stop_ids=[tokenizer.eos_token_id])
        out.think_start = start
        return out

    greedy = decoder_from_args("text").generate(lm, ctx())
    degenerate = decoder_from_args("swireasoning", DEGENERATE).generate(lm, ctx())
    assert [degenerate.tokens(r) for r in range(2)] == [greedy.tokens(r) for r in range(2)]
    swi = decoder_from_args("swireasoning", {"window_size": 4, "max_switches": 1, "answer_tokens": 8}).generate(
        lm, ctx(40)
    )
    for row in range(2):
        print(f"\n[{swi.soft_steps[row]} soft, {swi.text_steps[row]} text] {tokenizer.decode(swi.tokens(row))!r}")
    assert (swi.soft_steps > 0).all() and (swi.text_steps > 0).all()
