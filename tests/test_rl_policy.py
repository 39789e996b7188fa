"""The latent policy: sampled log-probs equal their teacher-forced recomputation; gradients reach every part."""

from __future__ import annotations

import pytest
import torch

from latentreason.layout import encode_problem
from latentreason.methods.atp import ATPConfig, ATPLatent
from latentreason.rl.policy import LatentPolicy, gaussian_logpdf
from tests.helpers import build_tiny_lm, chain_problems


def atp_policy(model_type="llama", latent_logprob="mean", temperature=1.0, seed=0):
    lm = build_tiny_lm(model_type, seed=seed)
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
        torch.testing.assert_close(getattr(new, name), getattr(batch.old, name), atol=1e-4, rtol=0)
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
    torch.testing.assert_close(new.flat(), part.old.flat(), atol=1e-4, rtol=0)
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
