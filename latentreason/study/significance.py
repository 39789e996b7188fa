"""Paired comparisons of two methods on the same problems: a bootstrap over problems and an exact sign test.

`a` and `b` are per-problem scores in the same problem order, e.g. each problem's correctness averaged over
seeds (1, 2/3, 0, ...). Both tests look only at the per-problem differences a[i] - b[i].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A resampled mean difference this close to 0 counts as 0: averaging scores like 1/3 leaves rounding dust.
_ZERO = 1e-12
_DRAWS_PER_CHUNK = 2_000_000  # resampled problem indices held in memory at once


@dataclass(frozen=True)
class Bootstrap:
    difference: float  # mean(a) - mean(b)
    low: float  # 95% percentile interval of the difference
    high: float
    p: float  # two-sided; never 0 (the +1 correction), at least 2 / (resamples + 1)
    resamples: int


@dataclass(frozen=True)
class SignTest:
    better: int  # problems where a > b
    worse: int  # problems where a < b (ties are dropped)
    p: float  # exact two-sided binomial p with success probability 1/2


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0) -> Bootstrap:
    """Resample problems with replacement; the interval and p-value come from the resampled mean differences."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    _check_paired(a, b)
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # [N]
    n = len(differences)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)  # [R]
    chunk = max(1, _DRAWS_PER_CHUNK // n)
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        picks = rng.integers(0, n, size=(rows, n))  # [rows, N]
        means[start : start + rows] = differences[picks].mean(axis=1)
    observed = float(differences.mean())
    low, high = np.percentile(means, [2.5, 97.5])
    if observed > _ZERO:
        other_side = int((means <= _ZERO).sum())
    elif observed < -_ZERO:
        other_side = int((means >= -_ZERO).sum())
    else:
        return Bootstrap(observed, float(low), float(high), 1.0, resamples)
    p = min(1.0, 2 * (other_side + 1) / (resamples + 1))
    return Bootstrap(observed, float(low), float(high), p, resamples)


def sign_test(a: Sequence[float], b: Sequence[float]) -> SignTest:
    """Under 'neither is better', each untied problem favours a with probability 1/2: P(as lopsided or more)."""
    _check_paired(a, b)
    better = sum(x > y for x, y in zip(a, b))
    worse = sum(x < y for x, y in zip(a, b))
    untied = better + worse
    if untied == 0:
        return SignTest(0, 0, 1.0)
    tail = sum(math.comb(untied, k) for k in range(min(better, worse) + 1))
    return SignTest(better, worse, min(1.0, 2 * tail / 2**untied))


def _check_paired(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same problems: got {len(a)} and {len(b)} scores")
    if not a:
        raise ValueError("paired scores: no problems to compare")
