"""Generated vs real data: the summary statistics of `latentreason.data.stats` side by side."""

from __future__ import annotations

from collections.abc import Sequence

from latentreason.data.problems import Problem
from latentreason.data.stats import dataset_stats

# (measure, statistic) pairs compared by default; words are whitespace-separated tokens.
DEFAULT_FIELDS = (
    ("steps", "mean"),
    ("steps", "max"),
    ("question_words", "mean"),
    ("cot_words", "mean"),
    ("answer_words", "mean"),
)


def compare_stats(
    generated: Sequence[Problem], real: Sequence[Problem], fields: Sequence[tuple[str, str]] = DEFAULT_FIELDS
) -> dict[str, dict[str, float]]:
    """{'steps.mean': {'generated', 'real', 'relative_gap'}, ...}; gap = |gen - real| / |real|."""
    gen, ref = dataset_stats(generated), dataset_stats(real)
    rows = {}
    for measure, statistic in fields:
        g, r = gen[measure][statistic], ref[measure][statistic]
        if g is None or r is None:
            raise ValueError("cannot compare an empty problem list")
        gap = abs(g - r) / abs(r) if r else float(g != 0)
        rows[f"{measure}.{statistic}"] = {"generated": g, "real": r, "relative_gap": gap}
    return rows


def comparison_table(rows: dict[str, dict[str, float]]) -> str:
    """`compare_stats` output as aligned text, for reports and logs."""
    lines = [f"{'statistic':<22}{'generated':>11}{'real':>11}{'gap':>8}"]
    for name, row in rows.items():
        gap = f"{100 * row['relative_gap']:.0f}%"
        lines.append(f"{name:<22}{row['generated']:>11.2f}{row['real']:>11.2f}{gap:>8}")
    return "\n".join(lines)
