"""GRPO as pure functions on tensors: group advantages, the PPO-clip surrogate, KL, loss aggregation.

A rollout is a sequence of *actions* (latent thoughts, stop/continue decisions, answer tokens), each
with a log-probability. Tensors are [B, A] (rollouts x actions) with a mask of the actions that exist.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from latentreason.errors import ConfigError

# How per-action terms become one loss:
#   sequence-ratio  one ratio per rollout from its summed log-probs (the ATP-Latent reference)
#   token-mean      per-action ratios, mean over every action in the batch (DAPO, TRL's "bnpo")
#   sequence-mean   per-action ratios, mean within each rollout, then over rollouts (GRPO's paper)
LOSS_TYPES = ("sequence-ratio", "token-mean", "sequence-mean")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """(r - group mean) / (group std + eps); rollouts of one question are consecutive. [B] -> [B].

    scale=False keeps only the mean baseline (Dr. GRPO), which does not up-weight near-uniform groups.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size).float()  # [Q, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [Q, G]
    if scale:
        # Unbiased std as TRL; a group of one has no spread, so its advantage is 0 either way.
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


class PolicyLoss(NamedTuple):
    """A tuple, so that hooks on a model's outputs (DeepSpeed ZeRO-3's backward ones) find the loss in it."""

    loss: torch.Tensor  # scalar to minimise
    stats: dict[str, float]  # clip fractions, log-ratio statistics, kl


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-action estimate of KL(policy || reference) from a sample of the policy (Schulman's k3, >= 0)."""
    diff = (ref_logp - logp).clamp(-20.0, 20.0)  # exp of a summed latent density can overflow
    return diff.exp() - diff - 1.0


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    loss_type: str = "token-mean",
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    log_ratio_clamp: float | None = None,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
) -> PolicyLoss:
    """PPO-clip surrogate -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A) (+ beta * KL).

    logp, old_logp, ref_logp: [B, A]; mask: [B, A] bool; advantages: [B].
    log_ratio_clamp: clamp log(ratio) to [-c, c] before exp (the reference uses 3); the fraction
    clamped is reported, since a high fraction means the policy moved more than the clip allows.
    """
    if loss_type not in LOSS_TYPES:
        raise ConfigError(f"loss_type: expected one of {LOSS_TYPES}, got {loss_type!r}")
    mask = mask.bool()
    high = epsilon if epsilon_high is None else epsilon_high
    zero = torch.zeros_like(logp)
    if loss_type == "sequence-ratio":
        # One action per rollout: the summed log-prob of everything it did.
        log_ratio = (torch.where(mask, logp - old_logp, zero)).sum(1, keepdim=True)  # [B, 1]
        act_mask = mask.any(1, keepdim=True)  # [B, 1]
    else:
        log_ratio = torch.where(mask, logp - old_logp, zero)  # [B, A]
        act_mask = mask
    raw = log_ratio.detach()[act_mask]  # statistics before the clamp: how far the policy really moved
    clamped = torch.zeros_like(log_ratio, dtype=torch.bool)
    if log_ratio_clamp is not None:
        clamped = log_ratio.abs() > log_ratio_clamp
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = log_ratio.exp()  # [B, A'] (A' = 1 for sequence-ratio)
    adv = advantages[:, None].to(ratio.dtype)  # [B, 1]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - epsilon, 1 + high) * adv
    per_action = -torch.minimum(unclipped, clipped)  # [B, A']
    kl = zero.new_zeros(())
    if ref_logp is not None:
        per_kl = kl_k3(logp, ref_logp)  # [B, A]
        kl = masked_mean(per_kl, mask)
        if beta:
            if loss_type == "sequence-ratio":
                per_action = per_action + beta * torch.where(mask, per_kl, zero).sum(1, keepdim=True)
            else:
                per_action = per_action + beta * per_kl
    if loss_type == "sequence-mean":
        counts = act_mask.sum(1).clamp(min=1)  # [B]
        per_rollout = torch.where(act_mask, per_action, torch.zeros_like(per_action)).sum(1) / counts  # [B]
        loss = per_rollout[act_mask.any(1)].mean() if act_mask.any() else per_action.sum() * 0.0
    else:
        loss = masked_mean(per_action, act_mask)
    with torch.no_grad():
        low_clip = (ratio < 1 - epsilon) & (adv < 0) & act_mask
        high_clip = (ratio > 1 + high) & (adv > 0) & act_mask
        n = act_mask.sum().clamp(min=1)
        stats = {
            "clip_ratio/low_mean": float(low_clip.sum() / n),
            "clip_ratio/high_mean": float(high_clip.sum() / n),
            "clip_ratio/region_mean": float((low_clip | high_clip).sum() / n),
            "log_ratio/mean": float(raw.mean()) if raw.numel() else 0.0,
            "log_ratio/max_abs": float(raw.abs().max()) if raw.numel() else 0.0,
            "log_ratio/clamped_frac": float((clamped & act_mask).sum() / n),
            "kl": float(kl),
        }
    return PolicyLoss(loss, stats)
