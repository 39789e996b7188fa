"""Summary statistics of a list of problems, for `latentreason data stats`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from latentreason.data.problems import Problem

# Row name -> how to measure one problem. Words are whitespace-separated tokens.
_MEASURES: dict[str, Callable[[Problem], int]] = {
    "steps": lambda p: len(p.steps),
    "question_chars": lambda p: len(p.question),
    "question_words": lambda p: len(p.question.split()),
    "cot_chars": lambda p: len(p.cot),
    "cot_words": lambda p: len(p.cot.split()),
    "answer_chars": lambda p: len(p.answer),
    "answer_words": lambda p: len(p.answer.split()),
}


def dataset_stats(problems: Sequence[Problem]) -> dict:
    """{'count': N, 'steps': {'mean', 'min', 'max'}, 'question_chars': {...}, ...}.

    Every measure has mean (rounded to 2 decimals), min and max; they are None for an empty list.
    The result is plain JSON.
    """
    stats: dict = {"count": len(problems)}
    for name, measure in _MEASURES.items():
        values = [measure(p) for p in problems]
        if values:
            stats[name] = {
                "mean": round(sum(values) / len(values), 2),
                "min": min(values),
                "max": max(values),
            }
        else:
            stats[name] = {"mean": None, "min": None, "max": None}
    return stats


def format_stats(stats: dict) -> str:
    """A small aligned table of `dataset_stats` output."""
    rows = [("", "mean", "min", "max")]
    for name in _MEASURES:
        cell = stats[name]
        mean = "-" if cell["mean"] is None else f"{cell['mean']:.1f}"
        low, high = ("-", "-") if cell["min"] is None else (str(cell["min"]), str(cell["max"]))
        rows.append((name.replace("_", " "), mean, low, high))
    first = max(len(row[0]) for row in rows)
    other = max(len(value) for row in rows for value in row[1:])
    lines = [f"problems: {stats['count']}"]
    lines += [row[0].ljust(first) + "".join(v.rjust(other + 2) for v in row[1:]) for row in rows]
    return "\n".join(lines)
