"""An accuracy over several seeds: mean, sample standard deviation and range, and how a table prints them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for a single seed
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("Spread.of needs at least one value")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, min(values), max(values))

    def cells(self) -> list[str]:
        """Two table cells for accuracies in [0, 1]: '30.0% ± 10.0' (std in points) and '20.0%-40.0%'."""
        return [f"{self.mean:.1%} ± {self.std * 100:.1f}", f"{self.low:.1%}-{self.high:.1%}"]
