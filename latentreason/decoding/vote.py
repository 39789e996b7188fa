"""Choosing one reply among a problem's candidates: majority vote over their final answers, or the best score."""

from __future__ import annotations

from collections import Counter

from latentreason.data.answers import extract_answer, normalize_number, normalize_text


def answer_key(text: str, mode: str = "flexible") -> str | None:
    """The final answer of `text` in a canonical form ("18.0" and "18" agree; case and spacing of sentence
    answers do not count), or None when it has none."""
    answer = extract_answer(text, mode)
    if answer is None:
        return None
    return normalize_number(answer) or normalize_text(answer)


def majority_vote(texts: list[str], mode: str = "flexible") -> int:
    """The index of the first candidate whose answer is the most common one. Candidates without an answer do
    not vote; ties go to the answer seen first; with no answer at all, candidate 0."""
    keys = [answer_key(text, mode) for text in texts]
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        return 0
    top = max(counts.values())
    return next(i for i, key in enumerate(keys) if key is not None and counts[key] == top)


def best_scored(scores: list[float]) -> int:
    """The index of the highest score (the first one on ties)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
