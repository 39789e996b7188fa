"""Which answer a set of replies votes for, and which reply a score picks: the rules the harness's
majority-vote and best-of-N metrics (evaluation/tts_metrics.py) and the decoders' own choices
(decoding/vote.py) share, so both agree."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from latentreason.data.answers import KINDS, normalize_number, normalize_text


def vote_key(prediction: str | None, kind: str) -> str | None:
    """What `prediction` votes for, for a reference of `kind` ("number" or "text"); None: it does not vote."""
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
    if prediction is None or not prediction.strip():
        return None
    number = normalize_number(prediction) if kind == "number" else None
    return number if number is not None else normalize_text(prediction)


def voted_index(votes: Sequence[str | None]) -> int | None:
    """The index of the first sample holding the most common vote; None when no sample votes."""
    counts = Counter(vote for vote in votes if vote is not None)
    if not counts:
        return None
    top = max(counts.values())
    return next(i for i, vote in enumerate(votes) if vote is not None and counts[vote] == top)


def best_scored(scores: Sequence[float]) -> int:
    """The index of the highest score (the first one on ties)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
