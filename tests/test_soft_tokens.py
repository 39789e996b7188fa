"""Soft Tokens, Hard Truths: the Gaussian log-density of noisy soft inputs against the formula, sampled
log-probs equal their one-call recomputation (after a chat or a layout prompt), the thinking phase ends as
documented, draws do not depend on the batch, and a GRPO run trains a chat model. Models are float64, so "equal" is
`EXACT`."""

from __future__ import annotations

import math

import pytest
import torch

from latentreason.config import load_config
from latentreason.engine.loss import soft_input_logdensity
from latentreason.engine.steps import EMBED, FORCED, TOKEN
from latentreason.errors import ConfigError
from latentreason.model.pretrained import PRETRAINED, model_kind
from latentreason.rl.config import RLConfig
from latentreason.rl.run import run_rl
from latentreason.rl.soft_token_policy import SoftTokenPolicy
from tests.helpers import EXACT, chain_problems, save_tiny_chat_model
from tests.test_token_policy import PROMPTS, chat_run_overrides, model_and_prompt, sampled_alone_and_together


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")


def soft_policy(chat_dir, mode="soft", max_steps=24, max_thinking=5, prompt="chat", **fields) -> SoftTokenPolicy:
    lm, builder = model_and_prompt(chat_dir, prompt)
    settings = {"think_inputs": mode, "temperature": 1.3, "max_completion_length": max_steps, "soft_top_k": 8}
    config = load_config(RLConfig, None, {**settings, "max_thinking_steps": max_thinking, **fields})
    return SoftTokenPolicy(lm, builder, config)


def prompts(policy, n=6, seed=5):
    return policy.prompts(chain_problems(n, seed=seed))


def test_the_log_density_is_the_gaussian_around_the_top_k_mixture():
    torch.manual_seed(0)
    vocab, d = 11, 4
    head, embed = torch.nn.Linear(d, vocab, bias=False).double(), torch.nn.Embedding(vocab, d).double()
    hidden, inputs = torch.randn(2, 3, d, dtype=torch.float64), torch.randn(2, 3, d, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    got = soft_input_logdensity(head, embed, hidden, inputs, mask, temperature=0.5, top_k=3, sigma=0.7, chunk=2)
    got = got.detach()  # two chunks, checkpointed: the head's weights require grad
    for b in range(2):
        for t in range(3):
            if not mask[b, t]:
                assert got[b, t] == 0
                continue
            logits = head(hidden[b, t]).detach() / 0.5  # [V]
            kept = logits.topk(3)
            p = torch.zeros(vocab, dtype=torch.float64).scatter(0, kept.indices, kept.values.softmax(-1))
            mean = p @ embed.weight.detach()  # the mixture, densely
            z = (inputs[b, t] - mean) / 0.7
            expected = float(-0.5 * (z @ z) - d * math.log(0.7) - d / 2 * math.log(2 * math.pi))
            assert float(got[b, t]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("mode", ["soft", "fuzzy"])
def test_recomputed_logprobs_equal_the_sampled_ones(chat_dir, mode, prompt):
    policy = soft_policy(chat_dir, mode, prompt=prompt)
    with torch.no_grad():  # the end-of-turn token likely enough that answers end at different steps
        policy.lm.lm_head.weight[policy.stop_ids[0]] *= 3.0
    rollouts = policy.sample(prompts(policy), torch.Generator().manual_seed(2))
    assert rollouts.thinking_mask.any() and rollouts.token_mask.any()
    with torch.no_grad():
        new = policy.logprobs(rollouts)
    torch.testing.assert_close(new.flat(), rollouts.old.flat(), **EXACT)
    mask = rollouts.action_mask
    assert (rollouts.old.flat()[~mask] == 0).all()


def test_thinking_runs_its_steps_then_forces_the_end_text_then_answers_in_tokens(chat_dir):
    policy = soft_policy(chat_dir, max_steps=24, max_thinking=4)
    end = policy.thinking.think_end
    rollouts = policy.sample(prompts(policy, 3), torch.Generator().manual_seed(0))
    for row in range(3):
        kinds = rollouts.kinds[row, : rollouts.lengths[row]].tolist()
        # The random model never ranks the end text's first token first: thinking lasts max_thinking steps.
        assert kinds[:4] == [EMBED] * 4
        assert kinds[4 : 4 + len(end)] == [FORCED] * len(end)
        assert rollouts.tokens[row, 4 : 4 + len(end)].tolist() == end
        assert set(kinds[4 + len(end) :]) <= {TOKEN}
        fed = rollouts.inputs[row, :4]  # [4, d] the noisy inputs, recorded for the recomputation
        assert (fed.norm(dim=-1) > 0).all() and (rollouts.inputs[row, 4:] == 0).all()


def test_fuzzy_thinking_is_the_top_token_plus_noise(chat_dir):
    policy = soft_policy(chat_dir, "fuzzy", soft_noise=1e-6)
    rollouts = policy.sample(prompts(policy, 2), torch.Generator().manual_seed(1))
    thinking = rollouts.thinking_mask  # [B, T]
    tops = policy.lm.embed(rollouts.tokens[thinking])  # [n, d] the most probable tokens' embeddings
    torch.testing.assert_close(rollouts.inputs[thinking], tops, atol=1e-4, rtol=0)


def test_draws_do_not_depend_on_the_batch(chat_dir):
    policy = soft_policy(chat_dir)
    alone, together, n = sampled_alone_and_together(policy, prompts(policy, 4), 3)
    torch.testing.assert_close(alone.inputs[0, :n], together.inputs[0, :n], **EXACT)
    torch.testing.assert_close(alone.old.flat()[0], together.select(torch.tensor([0])).old.flat()[0], **EXACT)


def test_gradients_reach_the_model_through_both_kinds_of_action(chat_dir):
    policy = soft_policy(chat_dir)
    rollouts = policy.sample(prompts(policy, 3), torch.Generator().manual_seed(1))
    new = policy.logprobs(rollouts)
    new.latent.sum().backward(retain_graph=True)
    head_grad = policy.lm.lm_head.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0  # mu depends on the thinking distribution
    policy.lm.zero_grad()
    new.token.sum().backward()
    assert policy.lm.lm_head.weight.grad.abs().sum() > 0


def test_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="think_inputs"):
        load_config(RLConfig, None, {"think_inputs": "liquid"})
    with pytest.raises(ConfigError, match="multiplex_width"):
        load_config(RLConfig, None, {"think_inputs": "soft", "multiplex_width": 3})
    with pytest.raises(ConfigError, match="max_thinking_steps"):
        load_config(RLConfig, None, {"think_inputs": "soft", "max_completion_length": 8, "max_thinking_steps": 8})
    assert load_config(RLConfig, None, {"think_inputs": "soft", "max_completion_length": 8}).thinking_steps == 4


def test_a_soft_token_run_trains_a_chat_model_with_lora_and_saves_a_plain_model(chat_dir, tmp_path):
    overrides = chat_run_overrides(chat_dir, tmp_path, think_inputs="fuzzy", max_completion_length=8)
    result = run_rl(load_config(RLConfig, None, overrides), progress=False)
    assert result.global_step == 2 and result.eval is not None and result.eval.n == 4  # evaluated hard
    assert model_kind(str(result.final_dir)) == PRETRAINED
