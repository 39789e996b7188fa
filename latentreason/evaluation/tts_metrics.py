"""Test-time scaling metrics over the N sampled replies to each problem: pass@k, coverage, majority vote and
best-of-N, each also as N grows (`scaling_curve`).

The rules (`data/votes.py`, shared with `decoding/vote.py`, which picks one reply by the same vote):

- A sample votes with its extracted prediction in canonical form (`vote_key`). For a numeric reference, a
  prediction that is a plain number votes with every prediction of the same value ("18" = "18.0" = "$18",
  as `parse_number` compares them); any other prediction, and every prediction for a sentence reference,
  votes with the predictions equal after `normalize_text` (case, spacing, a trailing full stop), which is
  how the answer checker compares sentences. A LaTeX answer ("\\frac{1}{2}") is compared as text, so it
  does not vote with "0.5".
- Samples with no extractable answer do not vote; a problem none of whose samples has an answer counts
  as wrong.
- A tie between answers goes to the answer seen first (the lowest sample index).
- Best-of-N keeps the sample with the highest score; a tie goes to the first of them.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from latentreason.data.votes import best_scored, voted_index


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from `n` samples of which `c` are correct (Chen et al. 2021): the
    chance that `k` of them, drawn without replacement, include a correct one, 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod over i = n-c+1 .. n of (1 - k/i), the same ratio without forming a binomial
    coefficient (C(200, 100) alone overflows a float)."""
    if min(n, c, k) < 0:
        raise ValueError(f"pass_at_k: n, c and k must not be negative, got n={n}, c={c}, k={k}")
    if k == 0:
        raise ValueError("pass_at_k: k must be at least 1 (pass@0 draws no sample)")
    if c > n:
        raise ValueError(f"pass_at_k: c={c} correct samples out of n={n}; c cannot exceed n")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} exceeds the n={n} samples drawn")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def coverage(correct: Sequence[bool]) -> bool:
    """Whether any sample is correct (pass@N with all N samples)."""
    return any(correct)


def majority_vote_correct(votes: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer is correct (samples sharing a vote are all right or all wrong)."""
    winner = voted_index(votes)
    return winner is not None and bool(correct[winner])


def best_of_n_correct(scores: Sequence[float], correct: Sequence[bool]) -> bool:
    """Whether the highest-scored sample is correct."""
    return bool(correct[best_scored(scores)])


@dataclass(frozen=True)
class Samples:
    """One problem's sampled replies: whether each is correct, its `vote_key` and, when a scorer rated them
    all, its score."""

    correct: Sequence[bool]
    votes: Sequence[str | None]
    scores: Sequence[float] | None = None

    def __post_init__(self):
        n = len(self.correct)
        if n == 0:
            raise ValueError("Samples: a problem needs at least one sample")
        if len(self.votes) != n:
            raise ValueError(f"Samples: {len(self.votes)} votes for {n} samples; expected one per sample")
        if self.scores is not None:
            if len(self.scores) != n:
                raise ValueError(f"Samples: {len(self.scores)} scores for {n} samples; expected one per sample")
            for i, score in enumerate(self.scores):
                if not math.isfinite(score):
                    raise ValueError(f"Samples: score of sample {i} is {score}; expected a finite number")


@dataclass(frozen=True)
class ScalingCurve:
    """Mean accuracy over the problems of each aggregator with N samples per problem, N in `sizes`."""

    sizes: list[int]  # 1, 2, 4, ... and the fewest samples any problem has
    pass_at_n: list[float]  # the unbiased estimator
    majority_vote: list[float]
    best_of_n: list[float] | None  # None unless every sample has a score
    coverage: float  # problems with at least one correct sample (among all of theirs)

    def fields(self) -> dict:
        """The results.json fields: the metrics with every sample, and the curve they end."""
        out = {
            "pass_at_k": dict(zip(self.sizes, self.pass_at_n)),
            "coverage": self.coverage,
            "majority_vote_accuracy": self.majority_vote[-1],
        }
        curve = {"samples": self.sizes, "majority_vote": self.majority_vote}
        if self.best_of_n is not None:
            out["best_of_n_accuracy"] = self.best_of_n[-1]
            curve["best_of_n"] = self.best_of_n
        return {**out, "accuracy_vs_samples": curve}


def sample_sizes(total: int) -> list[int]:
    """1, 2, 4, ... up to `total`, and `total` itself when it is not a power of two."""
    if total < 1:
        raise ValueError(f"sample_sizes: expected at least 1 sample, got {total}")
    sizes = [1 << i for i in range(total.bit_length())]
    return sizes if sizes[-1] == total else [*sizes, total]


def scaling_curve(problems: Sequence[Samples], seed: int = 0, max_subsets: int = 200) -> ScalingCurve:
    """Each aggregator's accuracy as N grows: with N of a problem's samples, the mean over its N-subsets.

    - pass@N: the unbiased estimator (`pass_at_k`), exact.
    - best-of-N: exact and cheap. Order the samples as they win (score down, then index up): the one at
      rank r wins an N-subset exactly when the subset holds it and N-1 of the samples ranked below it, so
      its weight is C(total-1-r, N-1) / C(total, N).
    - majority vote: the winner depends on the whole subset, so it is averaged over all N-subsets when there
      are at most `max_subsets` of them (exact), else over `max_subsets` uniform random N-subsets drawn
      from `random.Random(seed)` (C(64, 32) subsets are too many to enumerate). The same problems, `seed`
      and order give the same curve.
    """
    if not problems:
        raise ValueError("scaling_curve: no problems")
    if max_subsets < 1:
        raise ValueError(f"scaling_curve: max_subsets must be at least 1, got {max_subsets}")
    sizes = sample_sizes(min(len(p.correct) for p in problems))
    rng = random.Random(seed)

    def mean(values) -> float:
        return math.fsum(values) / len(problems)

    scored = all(p.scores is not None for p in problems)
    return ScalingCurve(
        sizes=sizes,
        pass_at_n=[mean(pass_at_k(len(p.correct), sum(map(bool, p.correct)), n) for p in problems) for n in sizes],
        majority_vote=[mean(_subset_vote(p, n, rng, max_subsets) for p in problems) for n in sizes],
        best_of_n=[mean(_subset_best(p, n) for p in problems) for n in sizes] if scored else None,
        coverage=mean(coverage(p.correct) for p in problems),
    )


def _subset_vote(problem: Samples, n: int, rng: random.Random, max_subsets: int) -> float:
    """Majority-vote accuracy over `problem`'s n-subsets (all of them, or `max_subsets` random ones)."""
    total = len(problem.correct)
    if math.comb(total, n) <= max_subsets:
        subsets = itertools.combinations(range(total), n)
    else:  # sorted: a tie goes to the answer seen first in the original order
        subsets = (sorted(rng.sample(range(total), n)) for _ in range(max_subsets))
    right = drawn = 0
    for subset in subsets:
        winner = voted_index([problem.votes[i] for i in subset])
        right += winner is not None and bool(problem.correct[subset[winner]])
        drawn += 1
    return right / drawn


def _subset_best(problem: Samples, n: int) -> float:
    """Best-of-n accuracy over all of `problem`'s n-subsets, exactly (see `scaling_curve`)."""
    total = len(problem.correct)
    ranked = sorted(range(total), key=lambda i: (-problem.scores[i], i))
    wins = sum(math.comb(total - 1 - rank, n - 1) for rank, i in enumerate(ranked) if problem.correct[i])
    return wins / math.comb(total, n)
