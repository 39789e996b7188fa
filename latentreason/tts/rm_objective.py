"""LatentRM's training loss and its checkpoint metric.

Loss (LatentTTS): at each step t, a softmax over the K trajectories of one question of their scores at t,
scored by cross-entropy against soft targets, the Monte-Carlo success estimates of their prefixes normalised
to sum to one. Only trajectories that reached step t take part; a step where none of them has any success
gives no target and is skipped. The loss is the mean over the steps that have one.

recall@1: the share of questions whose top-scored trajectory (by its final-step score) is a correct one.
"""

from __future__ import annotations

import torch

from latentreason.evaluation.tts_metrics import best_of_n_correct


def step_softmax_loss(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scores, values [K, N] (one question's K trajectories, N steps); mask [K, N] bool (the step exists).
    Returns the scalar loss (zero, still attached to `scores`, when no step has a target)."""
    if not scores.shape == values.shape == mask.shape or scores.dim() != 2:
        raise ValueError(
            f"step_softmax_loss: scores {list(scores.shape)}, values {list(values.shape)}, mask "
            f"{list(mask.shape)}; expected three [K, N] tensors"
        )
    values = values.float() * mask
    totals = values.sum(0)  # [N]
    has_target = totals > 0  # [N]
    if not has_target.any():
        return scores.sum() * 0
    targets = values[:, has_target] / totals[has_target]  # [K, n]
    logits = scores.float()[:, has_target].masked_fill(~mask[:, has_target], float("-inf"))
    log_probs = torch.log_softmax(logits, 0).masked_fill(~mask[:, has_target], 0)  # [K, n]
    return -(targets * log_probs).sum(0).mean()


def recall_at_1(final_scores: list[list[float]], correct: list[list[bool]]) -> float:
    """Share of questions whose highest final score (the first on ties) belongs to a correct trajectory."""
    if len(final_scores) != len(correct) or not final_scores:
        raise ValueError(f"recall_at_1: {len(final_scores)} score lists for {len(correct)} questions")
    hits = 0
    for scores, right in zip(final_scores, correct):
        if len(scores) != len(right) or not scores:
            raise ValueError(f"recall_at_1: {len(scores)} scores for {len(right)} trajectories of one question")
        hits += best_of_n_correct(scores, right)
    return hits / len(final_scores)


def chance_recall_at_1(correct: list[list[bool]]) -> float:
    """The recall@1 a scorer that picks a trajectory uniformly at random has in expectation: the mean share of
    correct trajectories per question. An RM is worth its cost only above it."""
    if not correct or not all(correct):
        raise ValueError("chance_recall_at_1: expected at least one question, each with trajectories")
    return sum(sum(right) / len(right) for right in correct) / len(correct)
