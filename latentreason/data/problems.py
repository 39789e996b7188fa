"""The one record type every loader, generator, trainer and evaluator shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Problem:
    """A reasoning problem.

    question: the prompt text.
    steps: the chain of thought, one string per reasoning step (e.g. '<<16-3-4=9>>'); may be empty.
    answer: the reference answer as text ('18', 'Tom is a lempus.', 'True').
    meta: anything format-specific (source file, record index, graph fields, ...).
    """

    question: str
    steps: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cot(self) -> str:
        """The chain of thought as one string, steps separated by a space."""
        return " ".join(self.steps)
