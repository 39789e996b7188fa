"""Full-ranking evaluation of a recommender on one split, and its inference latency per user."""

from __future__ import annotations

import time

import torch

from latentreason.rec.metrics import ranking_metrics, target_ranks
from latentreason.rec.model import Recommender
from latentreason.rec.split import LeaveOneOut


@torch.no_grad()
def rank_split(model: Recommender, split: LeaveOneOut, name: str, batch_size: int) -> dict[str, float]:
    """Recall@10/20 and NDCG@10/20 of every user's `name` target ('valid' or 'test') among all items."""
    was_training = model.training
    model.eval()
    examples = split.eval_examples(name)
    ranks = []
    for start in range(0, len(examples), batch_size):
        histories, following = split.batch(examples[start : start + batch_size])
        scores = model.scores(histories.to(model.device))  # [B, N + 1]
        ranks.append(target_ranks(scores, following[:, -1].to(model.device)).cpu())
    model.train(was_training)
    return {**ranking_metrics(torch.cat(ranks)), "users": len(examples)}


@torch.no_grad()
def latency_per_user(model: Recommender, split: LeaveOneOut, users: int = 200, batch_size: int = 1) -> float:
    """Milliseconds to score every item for one user, at `batch_size` users per call (median over calls)."""
    model.eval()
    examples = split.eval_examples("test")[:users]
    starts = range(0, len(examples), batch_size)
    batches = [split.batch(examples[i : i + batch_size])[0].to(model.device) for i in starts]
    model.scores(batches[0])  # warm-up
    times = []
    for histories in batches:
        began = time.perf_counter()
        model.scores(histories)
        times.append((time.perf_counter() - began) * 1000 / len(histories))
    return float(torch.tensor(times).median())
