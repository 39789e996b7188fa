"""GRPO's pure functions on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from latentreason.errors import ConfigError
from latentreason.rl.grpo import clipped_policy_loss, group_advantages, kl_k3


def test_group_advantages_normalise_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    adv = group_advantages(rewards, group_size=3, eps=0.0)
    # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: mean 5/3, std sqrt(1/3)
    s = math.sqrt(1 / 3)
    expected = torch.tensor([2 / 3 / s, -1 / 3 / s, -1 / 3 / s, -2 / 3 / s, 1 / 3 / s, 1 / 3 / s])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(
        group_advantages(rewards, 3, scale=False), rewards - torch.tensor([1 / 3] * 3 + [5 / 3] * 3)
    )


def test_identical_rewards_give_zero_advantage_and_bad_groups_are_refused():
    assert torch.equal(group_advantages(torch.ones(4), 2), torch.zeros(4))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), 3)


def test_token_mean_surrogate_and_clipping():
    # One rollout, two actions; ratios exp(0.5) = 1.65 (clipped to 1.2 for A > 0) and exp(-0.1) = 0.905.
    logp = torch.tensor([[0.5, -0.1]], requires_grad=True)
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = clipped_policy_loss(logp, old, mask, torch.tensor([2.0]), loss_type="token-mean", epsilon=0.2)
    expected = -(min(math.exp(0.5) * 2, 1.2 * 2) + min(math.exp(-0.1) * 2, max(math.exp(-0.1), 0.8) * 2)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.stats["clip_ratio/high_mean"] == pytest.approx(0.5)
    assert out.stats["clip_ratio/low_mean"] == 0.0
    out.loss.backward()
    # The clipped action gets no gradient; the other one gets -A * ratio / 2.
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -2.0 * math.exp(-0.1) / 2]]))


def test_negative_advantage_clips_below_and_epsilon_high_widens_above():
    logp, old = torch.tensor([[-0.5]]), torch.zeros(1, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    out = clipped_policy_loss(logp, old, mask, torch.tensor([-1.0]), epsilon=0.2)
    assert out.loss.item() == pytest.approx(0.8)  # -min(0.607 * -1, 0.8 * -1)
    assert out.stats["clip_ratio/low_mean"] == 1.0
    up = clipped_policy_loss(torch.tensor([[0.3]]), old, mask, torch.tensor([1.0]), epsilon=0.2, epsilon_high=0.28)
    assert up.loss.item() == pytest.approx(-1.28)


def test_aggregation_modes_weight_rollouts_differently():
    # Rollout 0 has three actions, rollout 1 one; all ratios 1, so each action's loss is -A.
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.tensor([1.0, -3.0])
    token = clipped_policy_loss(logp, logp, mask, adv, loss_type="token-mean")
    seq = clipped_policy_loss(logp, logp, mask, adv, loss_type="sequence-mean")
    assert token.loss.item() == pytest.approx((-1 * 3 + 3) / 4)
    assert seq.loss.item() == pytest.approx((-1 + 3) / 2)


def test_sequence_ratio_uses_the_summed_log_prob_and_the_clamp_is_reported():
    logp = torch.tensor([[0.4, 0.4, 9.0], [0.1, 0.0, 0.0]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1.0, 1.0])
    out = clipped_policy_loss(logp, old, mask, adv, loss_type="sequence-ratio", epsilon=10.0, log_ratio_clamp=0.5)
    # Rollout 0: log-ratio 0.8 (the masked 9.0 is ignored), clamped to 0.5; rollout 1: 0.1.
    assert out.loss.item() == pytest.approx(-(math.exp(0.5) + math.exp(0.1)) / 2)
    assert out.stats["log_ratio/clamped_frac"] == 0.5
    assert out.stats["log_ratio/max_abs"] == pytest.approx(0.8)  # measured before the clamp


def test_kl_term_is_zero_at_the_reference_and_penalises_moving_away():
    logp = torch.tensor([[-1.0, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert torch.equal(kl_k3(logp, logp), torch.zeros(1, 2))
    ref = torch.tensor([[-1.5, -2.0]])
    expected_kl = math.exp(-0.5) + 0.5 - 1.0
    assert kl_k3(logp, ref)[0, 0].item() == pytest.approx(expected_kl)
    plain = clipped_policy_loss(logp, logp, mask, torch.tensor([0.0]), ref_logp=ref, beta=0.0)
    with_kl = clipped_policy_loss(logp, logp, mask, torch.tensor([0.0]), ref_logp=ref, beta=0.1)
    assert plain.loss.item() == 0.0 and plain.stats["kl"] == pytest.approx(expected_kl / 2)
    assert with_kl.loss.item() == pytest.approx(0.1 * expected_kl / 2)


def test_unknown_loss_type_is_a_config_error():
    t = torch.zeros(1, 1)
    with pytest.raises(ConfigError, match="loss_type"):
        clipped_policy_loss(t, t, t.bool(), torch.zeros(1), loss_type="mean")
