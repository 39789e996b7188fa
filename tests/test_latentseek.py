"""LatentSeek: no updates is plain decoding, batched equals one row at a time, the REINFORCE step moves the
rewarded tokens' log-probs the right way, rows stop at the reward threshold, the oracle is labelled, and the
self-verification reward has the paper's weights."""

from __future__ import annotations

import zlib
from types import SimpleNamespace

import pytest
import torch

from latentreason.decoding import DecodeContext, decoder_from_args
from latentreason.decoding.latentseek import LatentSeek, LatentSeekConfig, latent_tokens, policy_loss
from latentreason.decoding.verify import SelfVerification, approves, self_reward
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import NONE
from latentreason.errors import ConfigError
from tests.decoding_helpers import chat_prompt, decode_context, smollm2, smollm2_stop_ids
from tests.helpers import EXACT, MODEL_TYPES
from tests.test_smollm import needs_smollm2
from tests.test_steps import lm64, prompts_for


def context(lm, prompts, max_new_tokens=10, **kwargs) -> DecodeContext:
    questions = [f"problem {i}" for i in range(len(prompts))]
    return decode_context(lm, prompts, max_new_tokens, questions=questions, **kwargs)


def picky(question: str, reply: str) -> float:
    """A deterministic verifier that accepts about one reply in three (by a checksum of its text)."""
    return -0.1 if zlib.crc32(reply.encode()) % 3 == 0 else -1.0


def always_wrong(question: str, reply: str) -> float:
    return -1.0


def latentseek(verifier=picky, **args) -> LatentSeek:
    return LatentSeek(LatentSeekConfig(**{"reward": "verifier", **args}), verifier=verifier)


# --- the decoder -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_zero_iterations_is_plain_greedy_decoding(model_type):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    greedy = decoder_from_args("text").generate(lm, context(lm, prompts))
    out = latentseek(always_wrong, iterations=0, rho=1.0).generate(lm, context(lm, prompts))
    assert out.trace.tokens.tolist() == greedy.trace.tokens.tolist()
    assert torch.equal(out.trace.kind, greedy.trace.kind)
    torch.testing.assert_close(out.trace.logprobs, greedy.trace.logprobs, **EXACT)
    assert out.updates.tolist() == [0] * 4 and out.rewards.tolist() == [-1.0] * 4
    # With updates, the replies move away from the rejected attempt.
    moved = latentseek(always_wrong, iterations=3, rho=0.5, lr=0.5).generate(lm, context(lm, prompts))
    assert moved.updates.tolist() == [3] * 4
    assert all(moved.tokens(row) != greedy.tokens(row) for row in range(4))


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0)])
def test_latentseek_batched_equals_one_row_at_a_time(model_type, sampling):
    lm = lm64(model_type)
    prompts = prompts_for(lm)
    decoder = latentseek(iterations=4, rho=0.5, lr=0.5)
    seeds = torch.tensor([3, 5, 8, 13])
    together = decoder.generate(lm, context(lm, prompts, seeds=seeds, sampling=sampling))
    assert len(set(together.updates.tolist())) > 1  # rows stopped at different iterations
    for row, prompt in enumerate(prompts):
        ctx = context(lm, [prompt], seeds=seeds[row : row + 1], sampling=sampling)
        ctx.questions = [f"problem {row}"]
        alone = decoder.generate(lm, ctx)
        assert alone.tokens(0) == together.tokens(row)
        assert torch.equal(alone.trace.kind[0], together.trace.kind[row])
        torch.testing.assert_close(alone.trace.logprobs[0], together.trace.logprobs[row], **EXACT)
        assert alone.rewards.tolist() == together.rewards[row : row + 1].tolist()
        assert alone.updates.tolist() == together.updates[row : row + 1].tolist()


def test_rows_stop_once_their_reward_is_above_the_threshold():
    lm = lm64("llama")
    prompts = prompts_for(lm, 3)
    calls: dict[str, int] = {}
    schedule = {"problem 0": [-1.0, -0.5, -0.1, -0.01, -1.0, -1.0], "problem 1": [0.0], "problem 2": [-1.0] * 9}

    def scripted(question: str, reply: str) -> float:
        calls[question] = calls.get(question, 0) + 1
        return schedule[question][calls[question] - 1]

    greedy = decoder_from_args("text").generate(lm, context(lm, prompts))
    out = latentseek(scripted, iterations=5, rho=0.5).generate(lm, context(lm, prompts))
    assert out.updates.tolist() == [2, 0, 5]  # above -0.2 after 2 updates; at once; never
    assert calls == {"problem 0": 3, "problem 1": 1, "problem 2": 6}  # the attempt's reward, then one per update
    assert out.rewards.tolist() == [-0.1, 0.0, -1.0]
    assert out.tokens(1) == greedy.tokens(1)  # a row accepted at once keeps its attempt
    calls.clear()
    out = latentseek(scripted, iterations=5, rho=0.5, reward_threshold=-0.05).generate(lm, context(lm, prompts))
    assert out.updates.tolist() == [3, 0, 5]


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=1.0)])
def test_the_latents_are_the_first_rho_of_the_reply_and_its_tokens_continue(sampling):
    lm = lm64("gpt2")
    prompts = prompts_for(lm, 2)
    free = decoder_from_args("text").generate(lm, context(lm, prompts, sampling=sampling))
    ctx = context(lm, prompts, sampling=sampling)
    ctx.stop_ids = [free.trace.tokens[0, 6].item()]  # row 0 stops at its 7th token, which does not count
    first = decoder_from_args("text").generate(lm, ctx)
    generated = [len(first.tokens(row)) - (first.tokens(row)[-1] in ctx.stop_ids) for row in range(2)]
    assert generated[0] == 6
    for rho, cap in ((1.0, 10), (0.5, 10), (1.0, 4)):
        out = latentseek(always_wrong, iterations=1, rho=rho, max_latent_tokens=cap, lr=1e-9).generate(lm, ctx)
        assert out.latent_tokens.tolist() == [min(int(n * rho), cap) for n in generated]
        # A tiny step leaves the latents' tokens as they were, and the continuation draws where the attempt
        # drew (the row's own counters): the reply is the attempt again.
        for row in range(2):
            assert out.tokens(row) == first.tokens(row)
        torch.testing.assert_close(out.trace.logprobs, first.trace.logprobs, atol=1e-6, rtol=0)


def test_max_new_tokens_bounds_latents_plus_continuation():
    lm = lm64("qwen2")
    prompts = prompts_for(lm)
    out = latentseek(always_wrong, iterations=2, rho=1.0, lr=0.5).generate(lm, context(lm, prompts, max_new_tokens=7))
    assert out.trace.kind.shape[1] == 7 and ((out.trace.kind != NONE).sum(1) == 7).all()


# --- the policy gradient ------------------------------------------------------------------------------------


def test_the_reinforce_step_raises_rewarded_tokens_and_lowers_punished_ones():
    generator = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 20, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(20, 8, generator=generator, dtype=torch.float64))
    lm = SimpleNamespace(lm_head=head)
    z0 = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    tokens = head(z0).argmax(-1)  # [5]

    def logprob(z):
        return head(z).log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)  # [5]

    for reward, sign in ((1.0, 1), (-0.5, -1)):
        z = z0.clone().requires_grad_()
        loss = policy_loss(lm, [z], [tokens], torch.tensor([reward]))
        (grad,) = torch.autograd.grad(loss, z)
        p = head(z0).softmax(-1)  # [5, V]
        expected = -reward * (torch.nn.functional.one_hot(tokens, 20) - p) @ head.weight  # d/dz of -R log p_x
        torch.testing.assert_close(grad, expected.detach(), **EXACT)
        optimizer = torch.optim.Adam([z], lr=0.01)
        z.grad = grad
        optimizer.step()
        change = (logprob(z) - logprob(z0)).detach()
        assert (sign * change > 0).all(), change
        assert [ids.tolist() for ids, _ in latent_tokens(lm, [z.detach()], Sampling().rows(1), torch.zeros(1))] == [
            tokens.tolist()
        ]


def test_the_loss_sums_each_row_with_its_own_reward():
    lm = lm64("llama")
    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randn(n, 32, generator=generator, dtype=torch.float64) for n in (3, 2))
    x, y = torch.tensor([5, 9, 1]), torch.tensor([7, 7])
    together = policy_loss(lm, [a, b], [x, y], torch.tensor([-1.0, 0.5]))
    alone = policy_loss(lm, [a], [x], torch.tensor([-1.0])) + policy_loss(lm, [b], [y], torch.tensor([0.5]))
    torch.testing.assert_close(together, alone, **EXACT)


# --- rewards and labels ------------------------------------------------------------------------------------


def test_the_oracle_is_labelled_as_such():
    lm = lm64("llama")
    prompts = prompts_for(lm, 2)
    oracle = decoder_from_args("latentseek", {"reward": "oracle", "iterations": 1})
    assert oracle.name == "latentseek(oracle)" and type(oracle).name == "latentseek"
    ctx = context(lm, prompts)
    with pytest.raises(ConfigError, match="reward: 'oracle' needs the reference answers"):
        oracle.generate(lm, ctx)
    ctx.references = ["12", "7"]
    out = oracle.generate(lm, ctx)
    assert out.decoder == "latentseek(oracle)"
    assert set(out.rewards.tolist()) <= {0.0, -1.0}
    plain = latentseek(iterations=0).generate(lm, context(lm, prompts))
    assert plain.decoder == "latentseek" and decoder_from_args("latentseek").name == "latentseek"


def test_the_verifier_reward_needs_a_verifier():
    lm = lm64("llama")
    with pytest.raises(ConfigError, match="reward: 'verifier' needs a verifier function"):
        decoder_from_args("latentseek", {"reward": "verifier"}).generate(lm, context(lm, prompts_for(lm, 2)))


def test_self_reward_weights_and_verdicts():
    assert self_reward([True, True, True, True]) == 0.0
    assert self_reward([False, True, True, True]) == pytest.approx(-2 / 6)  # calculations weigh 2
    assert self_reward([True, False, True, True]) == pytest.approx(-1 / 6)  # the answer weighs 1
    assert self_reward([True, True, False, False]) == pytest.approx(-3 / 6)
    assert self_reward([False] * 4) == -1.0
    assert self_reward([True] * 4, format_ok=False) == pytest.approx(-2 / 6)
    assert approves("The sums are right.\nVerdict: True")
    assert approves("verdict: false? No. VERDICT: **True**")  # the last verdict counts
    assert not approves("Verdict: False")
    assert not approves("It is true that the answer is right.")  # no verdict: not approved


def test_self_verification_runs_on_the_model():
    lm = lm64("llama")  # a tiny model never writes a verdict: every check fails (GPT-2's 128 positions are too few)
    verify = SelfVerification(stop_ids=[lm.eos_id], max_tokens=4)
    assert verify(lm, ["2+2", "3+3"], ["4", "6"]) == [-1.0, -1.0]
    formatted = SelfVerification(stop_ids=[lm.eos_id], max_tokens=4, format_pattern=r"#### \d+")
    assert formatted(lm, ["2+2"], ["#### 4"]) == [-1.0]
    assert formatted(lm, ["2+2"], ["4"]) == [pytest.approx(-8 / 6)]


@pytest.mark.parametrize(
    "args, field",
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"max_latent_tokens": 0}, "max_latent_tokens"),
        ({"lr": 0.0}, "lr"),
        ({"iterations": -1}, "iterations"),
        ({"reward": "judge"}, "reward"),
        ({"verify_tokens": 0}, "verify_tokens"),
        ({"format_pattern": "(unclosed"}, "format_pattern"),
        ({"chat_template": "maybe"}, "chat_template"),
    ],
)
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ConfigError, match=field):
        decoder_from_args("latentseek", args)


# --- the real model ---------------------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_self_rewarded_latentseek():
    lm = smollm2()
    tokenizer = lm.tokenizer
    questions = ["Tom has 3 bags with 4 apples in each bag. How many apples does he have?"]
    ctx = context(lm, [chat_prompt(lm, questions[0])], max_new_tokens=24)
    ctx.stop_ids, ctx.questions = smollm2_stop_ids(lm), questions
    greedy = decoder_from_args("text").generate(lm, ctx)
    decoder = decoder_from_args("latentseek", {"iterations": 2, "rho": 0.25, "verify_tokens": 48})
    out = decoder.generate(lm, ctx)
    print(f"\nattempt: {tokenizer.decode(greedy.tokens(0), skip_special_tokens=True)!r}")
    print(f"latentseek: {tokenizer.decode(out.tokens(0), skip_special_tokens=True)!r}")
    print(f"reward {out.rewards.tolist()}, updates {out.updates.tolist()}, latents {out.latent_tokens.tolist()}")
    assert out.decoder == "latentseek" and out.latent_tokens.tolist() == [len(greedy.tokens(0)) // 4]
    assert out.rewards[0].item() * 6 == pytest.approx(round(out.rewards[0].item() * 6))  # -(failed weight) / 6
    assert out.updates[0] == 0 or out.tokens(0) != greedy.tokens(0)
