"""The latent policy (ATP-Latent, CoLaR): sampled log-probs equal their teacher-forced recomputation; gradients
reach every part. The policies' models are float64, so "equal" is `EXACT` (up to float64 rounding)."""

from __future__ import annotations

import pytest
import torch

from latentreason.layout import encode_problem
from latentreason.methods.atp import ATPConfig, ATPLatent
from latentreason.methods.colar import CoLaR, CoLaRConfig
from latentreason.rl.policy import LatentPolicy, gaussian_logpdf
from tests.helpers import EXACT, build_tiny_lm, chain_problems, eot_at_varied_steps


def atp_policy(model_type="llama", latent_logprob="mean", temperature=1.0, seed=0):
    lm = build_tiny_lm(model_type, seed=seed, dtype=torch.float64)
    method = ATPLatent(ATPConfig(c_thought=2, max_latent_stage=3, step_decoder="small", step_decoder_layers=1))
    torch.manual_seed(seed)
    method.prepare(lm)
    lm.eval()
    return lm, LatentPolicy(lm, method, temperature, max_completion_length=8, latent_logprob=latent_logprob)


def prompts_for(lm, n=12):
    return [encode_problem(lm.tokenizer, p).prompt + [lm.bot_id] for p in chain_problems(n, seed=3)]


def test_gaussian_logpdf_matches_torch_distributions():
    z, mean, logvar = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    expected = torch.distributions.Normal(mean, (0.5 * logvar).exp()).log_prob(z)
    torch.testing.assert_close(gaussian_logpdf(z, mean, logvar), expected)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("latent_logprob", ["mean", "sum"])
def test_recomputed_logprobs_equal_sampled(model_type, latent_logprob):
    lm, policy = atp_policy(model_type, latent_logprob, temperature=0.7)
    batch = policy.sample(prompts_for(lm), torch.Generator().manual_seed(1))
    # The untrained stop head stops rows at different groups: the batch mixes latent counts.
    assert len(set(batch.num_latents.tolist())) > 1
    assert batch.decision_stop[batch.decision_mask].any() and (~batch.decision_stop[batch.decision_mask]).any()
    with torch.no_grad():
        new = policy.logprobs(batch)
    for name in ("latent", "decision", "token"):
        torch.testing.assert_close(getattr(new, name), getattr(batch.old, name), **EXACT)
    # Every action that exists has a log-prob; masked ones are exactly zero.
    mask = batch.action_mask
    assert (batch.old.flat()[~mask] == 0).all() and (batch.old.flat()[mask] != 0).all()


def test_recompute_of_a_selection_matches_and_is_trimmed():
    lm, policy = atp_policy()
    batch = policy.sample(prompts_for(lm), torch.Generator().manual_seed(2))
    rows = torch.tensor([5, 0, 7])
    part = batch.select(rows)
    assert part.tokens.shape[1] == int(batch.lengths[rows].max())
    with torch.no_grad():
        new = policy.logprobs(part)
    torch.testing.assert_close(new.flat(), part.old.flat(), **EXACT)
    torch.testing.assert_close(part.old.token, batch.old.token[rows, : part.tokens.shape[1]])


def test_sampling_is_reproducible_and_masks_follow_the_stops():
    lm, policy = atp_policy()
    a = policy.sample(prompts_for(lm), torch.Generator().manual_seed(4))
    b = policy.sample(prompts_for(lm), torch.Generator().manual_seed(4))
    assert torch.equal(a.thoughts, b.thoughts) and torch.equal(a.tokens, b.tokens)
    for row in range(len(a.prompts)):
        k = int(a.num_latents[row])
        assert k % 2 == 0  # rows stop only at group starts (c_thought = 2)
        decided = a.decision_mask[row].nonzero().squeeze(-1).tolist()
        assert decided == list(range(0, min(k, a.thoughts.shape[1] - 1) + 1, 2))[: len(decided)]
        assert a.decision_stop[row, decided].sum() <= 1  # one "stop" at most, at its end


def test_gradients_reach_base_model_latent_head_and_stop_head():
    lm, policy = atp_policy()
    batch = policy.sample(prompts_for(lm), torch.Generator().manual_seed(5))
    new = policy.logprobs(batch)
    new.flat()[batch.action_mask].sum().backward()
    for name in ("latent_head", "stop_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.heads[name].parameters()), name
    assert lm.model.get_input_embeddings().weight.grad.abs().sum() > 0
    # The step decoder is not part of the policy.
    assert all(p.grad is None for p in lm.heads["step_decoder"].parameters())


def colar_policy(model_type="llama", latent_logprob="mean", dtype=torch.float64):
    """A tiny CoLaR policy whose rows stop thinking at varied steps."""
    lm = build_tiny_lm(model_type, dtype=dtype)
    method = CoLaR(CoLaRConfig(max_latents=6, compression_factor=2, embedding_std=0.25))  # x and / 0.25 are exact
    torch.manual_seed(0)
    method.prepare(lm)
    eot_at_varied_steps(lm)
    lm.eval()
    return lm, method, LatentPolicy(lm, method, 0.7, max_completion_length=8, latent_logprob=latent_logprob)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
@pytest.mark.parametrize("latent_logprob", ["mean", "sum"])
def test_colar_recomputed_logprobs_equal_sampled(model_type, latent_logprob):
    lm, _, policy = colar_policy(model_type, latent_logprob)
    batch = policy.sample(policy.prompts(chain_problems(12, seed=3)), torch.Generator().manual_seed(1))
    assert len(set(batch.num_latents.tolist())) > 2  # rows stop at their own <eot>, at different steps
    made = batch.decision_stop[batch.decision_mask]
    assert made.any() and (~made).any()
    # A decision before every slot up to the stop; the latents are exactly the fed ones (no z at the stop).
    slots = torch.arange(batch.thoughts.shape[1])[None]
    assert torch.equal(batch.decision_mask, slots <= batch.num_latents[:, None])
    assert torch.equal(batch.latent_mask, slots < batch.num_latents[:, None])
    with torch.no_grad():
        new = policy.logprobs(batch)
        part = batch.select(torch.tensor([4, 0, 9]))
        new_part = policy.logprobs(part)
    for name in ("latent", "decision", "token"):
        torch.testing.assert_close(getattr(new, name), getattr(batch.old, name), **EXACT)
    torch.testing.assert_close(new_part.flat(), part.old.flat(), **EXACT)
    assert (batch.old.flat()[~batch.action_mask] == 0).all()


def test_colar_policy_prompts_with_its_speed_and_feeds_z_times_the_embedding_std():
    # float32: a z drawn at variance e^-40 rounds to its mean exactly, which the density check below relies on
    lm, method, policy = colar_policy(dtype=torch.float32)
    problems = chain_problems(6, seed=5)
    solver = method.solver(lm)
    assert policy.prompts(problems) == solver.prompts(problems)  # question (speed 2) <bot>
    with torch.no_grad():  # a near-zero variance: the sampled z is the mean the SFT solver feeds (x std)
        method.latent_head.logvar.weight.zero_()
        method.latent_head.logvar.bias.fill_(-40.0)
        batch = policy.sample(policy.prompts(problems), torch.Generator().manual_seed(0))
        first = solver.rollout(solver.prompts(problems)).latent_inputs[:, 0]  # [B, d]
    both = (batch.num_latents > 0) & (first.abs().sum(-1) > 0)
    assert both.any()
    torch.testing.assert_close(batch.thoughts[both, 0], first[both])
    # The density is of thought / std: at this variance about -(logvar + log 2 pi) / 2 = 19.1 per dimension.
    assert (batch.old.latent[batch.latent_mask] > 18).all()


def test_colar_gradients_reach_the_latent_head_and_the_base_model_through_the_stop_decisions():
    lm, method, policy = colar_policy()
    batch = policy.sample(policy.prompts(chain_problems(12, seed=3)), torch.Generator().manual_seed(5))
    new = policy.logprobs(batch)
    new.decision[batch.decision_mask].sum().backward()  # the LM head's <eot> decides: the base model learns to stop
    assert lm.model.get_input_embeddings().weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.latent_head.parameters())
    policy.logprobs(batch).latent[batch.latent_mask].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.latent_head.parameters())


def stopping_at_once(actions_cls):
    """The method's actions, except that every decision is "stop" (greedy or sampled)."""

    class StopAtOnce(actions_cls):
        def stop_logits(self, hidden, z):
            return torch.tensor([-50.0, 50.0]).expand(*hidden.shape[:-1], 2)  # [.., 2] (continue, stop)

        def greedy_stop(self, hidden, z):
            return torch.ones(hidden.shape[:-1], dtype=torch.bool)

    return StopAtOnce


@pytest.mark.parametrize("method_cls", [ATPLatent, CoLaR])
def test_solver_and_rl_take_the_stop_rule_from_the_methods_actions(method_cls, monkeypatch):
    monkeypatch.setattr(method_cls, "latent_actions", stopping_at_once(method_cls.latent_actions))
    lm = build_tiny_lm("llama")
    method = method_cls(method_cls.config_cls(max_new_tokens=4))
    method.prepare(lm)
    lm.eval()
    policy = LatentPolicy(lm, method, max_completion_length=4)
    problems = chain_problems(4, seed=3)
    sampled = policy.sample(policy.prompts(problems), torch.Generator().manual_seed(0))
    solved = method.solver(lm).solve(problems)
    assert sampled.num_latents.tolist() == [0] * 4
    assert [s.latent_tokens for s in solved] == [0] * 4
