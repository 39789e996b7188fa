"""Timing helpers shared by the benchmarks: wall time of one call, and ratios of calls timed alternately."""

from __future__ import annotations

import time

import torch


def once(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def paired(fn, floor, repeats: int) -> tuple[float, float, float]:
    """(median ratio fn/floor, median fn time, median floor time), the two timed alternately after a
    warm-up, so a slow spell of a shared machine hits both sides of a ratio alike."""
    fn(), floor()
    pairs = [(once(fn), once(floor)) for _ in range(repeats)]
    return median([a / b for a, b in pairs]), median([a for a, _ in pairs]), median([b for _, b in pairs])
