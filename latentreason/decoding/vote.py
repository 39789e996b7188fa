"""Choosing one reply among a problem's candidates: majority vote over their final answers, or the best score.

The vote and tie rules are `data/votes.py`'s, the harness's too, so a decoder's choice and the harness's
majority-vote accuracy agree."""

from __future__ import annotations

from latentreason.data.answers import extract_answer
from latentreason.data.votes import best_scored, vote_key, voted_index

__all__ = ["answer_key", "best_scored", "majority_vote"]


def answer_key(text: str, mode: str = "flexible") -> str | None:
    """The final answer of `text` in a canonical form ("18.0" and "18" agree; case and spacing of sentence
    answers do not count), or None when it has none."""
    return vote_key(extract_answer(text, mode), "number")


def majority_vote(texts: list[str], mode: str = "flexible") -> int:
    """The index of the first candidate whose answer is the most common one. Candidates without an answer do
    not vote; ties go to the answer seen first; with no answer at all, candidate 0."""
    winner = voted_index([answer_key(text, mode) for text in texts])
    return 0 if winner is None else winner
