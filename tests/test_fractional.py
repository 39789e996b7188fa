"""Fractional Reasoning: scale 0 is plain decoding, batched equals one row at a time, the steering hooks do what
the formula says and leave nothing behind, the steering vector is the first principal direction, the rescale
keeps norms, and the vote picks the most common answer (or the best score)."""

from __future__ import annotations

import pytest
import torch

from latentreason.decoding import DecodeContext, decoder_from_args
from latentreason.decoding.fractional import FractionalConfig, FractionalReasoning
from latentreason.decoding.steering import (
    decoder_layers,
    first_principal_direction,
    last_token_states,
    steer,
    steering,
    steering_vectors,
)
from latentreason.decoding.vote import answer_key, best_scored, majority_vote
from latentreason.engine.batch import left_pad, positions_from_mask
from latentreason.engine.sampling import Sampling
from latentreason.errors import ConfigError
from tests.decoding_helpers import chat_prompt, decode_context, smollm2, smollm2_stop_ids
from tests.helpers import EXACT, MODEL_TYPES
from tests.test_smollm import needs_smollm2
from tests.test_steps import lm64, prompts_for

SCALES = [0.0, 0.5, 1.5]
# Short pair prompts: the tiny tokenizer spells most words letter by letter and GPT-2 has 128 positions.
PAIRS = {"positive": "steps: {question}", "negative": "answer: {question}", "questions": ["3+4", "12-5", "6*7"]}


def fractional(**args) -> FractionalReasoning:
    return decoder_from_args("fractional", {**PAIRS, **args})


def context(lm, prompts, **kwargs) -> DecodeContext:
    return decode_context(lm, prompts, **kwargs)


def backbone_output(lm, prompts) -> torch.Tensor:
    batch = left_pad(prompts, lm.pad_id)
    mask = batch["attention_mask"]
    out = lm.backbone(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions_from_mask(mask))
    return out.last_hidden_state  # [B, P, d]


# --- the decoder ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_scale_zero_is_plain_greedy_decoding(model_type):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    greedy = decoder_from_args("text").generate(lm, context(lm, prompts))
    alone = fractional(scales=[0.0]).generate(lm, context(lm, prompts))
    assert alone.trace.tokens.tolist() == greedy.trace.tokens.tolist()
    torch.testing.assert_close(alone.trace.logprobs, greedy.trace.logprobs, **EXACT)
    # In a sweep, the scale-0 rows are still plain decoding, and the other scales change the replies.
    sweep = fractional(scales=SCALES).generate(lm, context(lm, prompts)).sweep
    assert sweep.trace.tokens[0::3].tolist() == greedy.trace.tokens.tolist()
    for j in (1, 2):
        assert sweep.trace.tokens[j::3].tolist() != greedy.trace.tokens.tolist()


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0)])
def test_fractional_batched_equals_one_row_at_a_time(model_type, sampling):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    decoder = fractional(scales=SCALES, layers=[1])
    seeds = torch.tensor([3, 5, 8, 13])
    together = decoder.generate(lm, context(lm, prompts, seeds=seeds, sampling=sampling))
    for row, prompt in enumerate(prompts):
        alone = decoder.generate(lm, context(lm, [prompt], seeds=seeds[row : row + 1], sampling=sampling))
        for j in range(3):
            assert alone.sweep.tokens(j) == together.sweep.tokens(row * 3 + j)
            torch.testing.assert_close(
                alone.sweep.trace.logprobs[j], together.sweep.trace.logprobs[row * 3 + j], **EXACT
            )
        assert alone.chosen.tolist() == together.chosen[row : row + 1].tolist()
        assert alone.tokens(0) == together.tokens(row)


def test_samples_each_get_the_whole_sweep():
    lm = lm64("llama")
    prompts = prompts_for(lm, 2)
    decoder = fractional(scales=SCALES)
    out = decoder.generate(lm, context(lm, prompts, samples=2, sampling=Sampling(temperature=1.0)))
    assert out.sweep.trace.kind.shape[0] == 2 * 2 * 3 and out.trace.kind.shape[0] == 4
    for row in range(4):  # each (problem, sample) row keeps one of its own three replies
        assert out.tokens(row) == out.sweep.tokens(row * 3 + int(out.chosen[row]))
    assert out.sweep.tokens(0) != out.sweep.tokens(3)  # samples 0 and 1 of problem 0 drew differently


def test_a_scorer_makes_it_best_of_n():
    lm = lm64("gpt2")
    prompts = prompts_for(lm, 3)
    sweep = fractional(scales=SCALES).generate(lm, context(lm, prompts)).sweep
    text = [lm.tokenizer.decode(sweep.tokens(row), skip_special_tokens=True) for row in range(9)]
    wanted = {text[0 * 3 + 2]: 1.0, text[1 * 3 + 1]: 1.0}  # problem 0 prefers scale 2, problem 1 scale 1
    seen = []

    def scorer(question: str, reply: str) -> float:
        seen.append(question)
        return wanted.get(reply, 0.0)

    decoder = fractional(scales=SCALES)
    decoder.scorer = scorer
    ctx = context(lm, prompts)
    ctx.questions = ["q0", "q1", "q2"]
    out = decoder.generate(lm, ctx)
    assert out.chosen.tolist() == [2, 1, 0]
    assert seen == ["q0"] * 3 + ["q1"] * 3 + ["q2"] * 3


def test_hooks_are_removed_afterwards_even_on_errors():
    lm = lm64("qwen2")
    prompts = prompts_for(lm)
    before = backbone_output(lm, prompts)
    decoder = fractional(scales=SCALES)
    decoder.generate(lm, context(lm, prompts))
    assert all(not layer._forward_hooks for layer in decoder_layers(lm))
    assert torch.equal(backbone_output(lm, prompts), before)
    vectors = decoder.vectors(lm)
    where = left_pad(prompts, lm.pad_id)["attention_mask"].bool()
    with pytest.raises(ZeroDivisionError):
        with steering(lm, vectors, [0, 1], torch.ones(4), where):
            assert all(len(layer._forward_hooks) == 1 for layer in decoder_layers(lm))
            _ = 1 / 0
    assert all(not layer._forward_hooks for layer in decoder_layers(lm))
    assert torch.equal(backbone_output(lm, prompts), before)


def test_steering_vectors_are_computed_once_per_model():
    decoder = fractional(scales=SCALES)
    llama, gpt2 = lm64("llama"), lm64("gpt2")
    first = decoder.vectors(llama)
    assert decoder.vectors(llama) is first
    assert decoder.vectors(gpt2) is not first and len(decoder._vectors) == 2


# --- the steering hooks ------------------------------------------------------------------------------------


def reference_steer(h, v, alpha):
    """The formula on one state [d]: (h + alpha v) |h| / |h + alpha v|."""
    shifted = h + alpha * v
    return shifted * h.norm() / shifted.norm()


def test_steered_prompts_follow_the_formula_at_every_layer_and_real_token():
    lm = lm64("llama")
    prompts = prompts_for(lm)
    where = left_pad(prompts, lm.pad_id)["attention_mask"].bool()  # [4, P]
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(2, 32, generator=generator, dtype=torch.float64)  # [layers, d]
    alpha = torch.tensor([0.7, 0.0, -0.4, 2.0], dtype=torch.float64)

    def manual(vector):  # an independent hook: the formula, state by state
        def hook(module, args, output):
            out = output.clone()
            for b in range(out.shape[0]):
                for t in range(out.shape[1]):
                    if where[b, t] and alpha[b] != 0:
                        out[b, t] = reference_steer(output[b, t], vector, alpha[b])
            return out

        return hook

    handles = [layer.register_forward_hook(manual(v)) for layer, v in zip(decoder_layers(lm), vectors)]
    try:
        expected = backbone_output(lm, prompts)
    finally:
        for handle in handles:
            handle.remove()
    with steering(lm, vectors, [0, 1], alpha, where):
        got = backbone_output(lm, prompts)
    torch.testing.assert_close(got[where], expected[where], **EXACT)
    assert not torch.allclose(got[where], backbone_output(lm, prompts)[where])  # the steering was real


def test_the_rescale_keeps_every_norm():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 5, 16, generator=generator, dtype=torch.float64) * 7  # [B, L, d]
    vector = torch.nn.functional.normalize(torch.randn(16, generator=generator, dtype=torch.float64), dim=0)
    alpha = torch.tensor([0.3, 0.0, 5.0], dtype=torch.float64)
    where = torch.ones(3, 5, dtype=torch.bool)
    where[2, :2] = False
    out = steer(hidden, vector, alpha, where)
    torch.testing.assert_close(out.norm(dim=-1), hidden.norm(dim=-1), **EXACT)
    assert torch.equal(out[1], hidden[1]) and torch.equal(out[2, :2], hidden[2, :2])  # untouched bit for bit
    cos_before, cos_after = hidden @ vector / hidden.norm(dim=-1), out @ vector / out.norm(dim=-1)
    assert (cos_after[0] > cos_before[0]).all() and (cos_after[2, 2:] > cos_before[2, 2:]).all()


# --- the steering vector --------------------------------------------------------------------------------------


def test_the_steering_vector_is_the_first_principal_direction():
    generator = torch.Generator().manual_seed(2)
    d, m = 12, 20
    u = torch.nn.functional.normalize(torch.randn(d, generator=generator, dtype=torch.float64), dim=0)
    coefficients = 2 + torch.rand(m, generator=generator, dtype=torch.float64)  # all along +u
    diffs = coefficients[:, None] * u + 0.3 * torch.randn(m, d, generator=generator, dtype=torch.float64)  # [m, d]
    got = first_principal_direction(diffs)
    _, _, v = torch.pca_lowrank(diffs, q=1, center=False)  # randomised: agrees to about 1e-9
    assert abs(got @ v[:, 0]).item() == pytest.approx(1.0, abs=1e-7)
    eigenvalues, eigenvectors = torch.linalg.eigh(diffs.T @ diffs)  # the maximiser of sum_i (h . d_i)^2
    assert abs(got @ eigenvectors[:, -1]).item() == pytest.approx(1.0, abs=1e-9)
    assert got.norm().item() == pytest.approx(1.0) and (got @ u).item() > 0.9  # signed along the mean difference
    assert (first_principal_direction(-diffs) @ u).item() < -0.9
    # Batched over layers == one layer at a time.
    stacked = torch.stack([diffs, diffs.flip(-1)])  # [2, m, d]
    torch.testing.assert_close(first_principal_direction(stacked)[1], first_principal_direction(diffs.flip(-1)))


def test_steering_vectors_have_the_mean_shift_along_the_direction():
    lm = lm64("llama")
    positive, negative = prompts_for(lm, 4), [p[:-2] for p in prompts_for(lm, 4)]
    differences = last_token_states(lm, positive, [0, 1]) - last_token_states(lm, negative, [0, 1])  # [2, 4, d]
    vectors = steering_vectors(lm, positive, negative, [0, 1])
    unit = steering_vectors(lm, positive, negative, [0, 1], unit=True)
    torch.testing.assert_close(unit, first_principal_direction(differences), **EXACT)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2, dtype=torch.float64), **EXACT)
    mean_shift = (differences @ unit[..., None]).squeeze(-1).mean(-1)  # [2]
    assert (mean_shift > 0).all()
    torch.testing.assert_close(vectors, unit * mean_shift[:, None], **EXACT)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_last_token_states_are_each_prompts_own_layer_outputs(model_type):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    states = last_token_states(lm, prompts, [0])  # [1, 4, d] one padded batch
    for row, prompt in enumerate(prompts):
        alone = lm.backbone(input_ids=torch.tensor([prompt]), output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(states[0, row], alone[0, -1], **EXACT)  # layer 0's output, last token


# --- the vote ---------------------------------------------------------------------------------------------------


def test_majority_vote_picks_the_most_common_answer():
    assert majority_vote(["so 7", "it is 12", "#### 12.0", "none", "7", "= 12"]) == 1
    assert majority_vote(["a 3", "b 4", "c 4", "d 3"]) == 0  # a tie goes to the answer seen first
    assert majority_vote(["no", "answer", "here"]) == 0
    assert majority_vote(["x", "the answer is 5", "x"]) == 1  # replies without an answer do not vote
    assert answer_key("total $1,200.") == answer_key("1200") == "1200"
    assert best_scored([0.1, 0.7, 0.7, -1.0]) == 1


# --- arguments --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, field",
    [
        ({"scales": []}, "scales"),
        ({"scales": ["big"]}, "scales"),
        ({"layers": [-1]}, "layers"),
        ({"layers": [1, 1]}, "layers"),
        ({"positive": "think hard"}, "positive"),
        ({"questions": []}, "questions"),
        ({"chat_template": "sometimes"}, "chat_template"),
        ({"answer_mode": "loose"}, "answer_mode"),
    ],
)
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ConfigError, match=field):
        decoder_from_args("fractional", args)


def test_arguments_that_depend_on_the_model_are_checked_against_it():
    lm = lm64("llama")
    with pytest.raises(ConfigError, match=r"layers: the model has 2 decoder layers"):
        fractional(layers=[0, 5]).generate(lm, context(lm, prompts_for(lm, 2)))
    with pytest.raises(ConfigError, match="chat_template: 'always'"):
        FractionalReasoning(FractionalConfig(chat_template="always")).vectors(lm)


# --- the real model ---------------------------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_sweep_keeps_plain_decoding_at_scale_zero_and_votes():
    lm = smollm2()
    questions = ["What is 12 + 30? Answer with a number.", "Tom has 3 bags of 4 apples. How many apples?"]
    ctx = context(lm, [chat_prompt(lm, q) for q in questions], max_new_tokens=24)
    ctx.stop_ids = smollm2_stop_ids(lm)
    greedy = decoder_from_args("text").generate(lm, ctx)
    decoder = decoder_from_args("fractional", {"scales": [0.0, 0.5, 1.0]})
    out = decoder.generate(lm, ctx)
    assert decoder.vectors(lm).shape == (30, 576)
    for row in range(2):
        assert out.sweep.tokens(row * 3) == greedy.tokens(row)
        texts = [lm.tokenizer.decode(out.sweep.tokens(row * 3 + j), skip_special_tokens=True) for j in range(3)]
        print(f"\nproblem {row}: " + " | ".join(repr(t) for t in texts), f"-> scale {int(out.chosen[row])}")
        assert out.tokens(row) == out.sweep.tokens(row * 3 + int(out.chosen[row]))
        assert out.sweep.tokens(row * 3 + 1) != greedy.tokens(row)  # the steering moved the reply
    assert all(not layer._forward_hooks for layer in decoder_layers(lm))
