"""Dataset statistics and their table."""

from __future__ import annotations

import json

from latentreason.data.formats import load_file
from latentreason.data.problems import Problem
from latentreason.data.stats import dataset_stats, format_stats

PROBLEMS = [
    Problem("How many apples?", ["<<2+3=5>>", "<<5*2=10>>"], "10"),
    Problem("Is Tom a wumpus or a lempus?", [], "Tom is a lempus."),
]


def test_stats_of_two_problems():
    stats = dataset_stats(PROBLEMS)
    assert stats["count"] == 2
    assert stats["steps"] == {"mean": 1.0, "min": 0, "max": 2}
    assert stats["question_chars"] == {"mean": 22.0, "min": 16, "max": 28}
    assert stats["question_words"] == {"mean": 5.0, "min": 3, "max": 7}
    assert stats["cot_chars"] == {"mean": 10.0, "min": 0, "max": 20}  # '<<2+3=5>> <<5*2=10>>'
    assert stats["cot_words"] == {"mean": 1.0, "min": 0, "max": 2}
    assert stats["answer_chars"] == {"mean": 9.0, "min": 2, "max": 16}
    assert stats["answer_words"] == {"mean": 2.5, "min": 1, "max": 4}
    assert json.loads(json.dumps(stats)) == stats


def test_stats_of_nothing():
    stats = dataset_stats([])
    assert stats["count"] == 0
    assert stats["steps"] == {"mean": None, "min": None, "max": None}
    table = format_stats(stats)
    assert table.splitlines()[0] == "problems: 0"
    assert "steps" in table and "-" in table


def test_table_rows_line_up():
    lines = format_stats(dataset_stats(PROBLEMS)).splitlines()
    assert lines[0] == "problems: 2"
    assert lines[1].split() == ["mean", "min", "max"]
    assert lines[2].split() == ["steps", "1.0", "0", "2"]
    assert lines[4].split() == ["question", "words", "5.0", "3", "7"]
    assert len({len(line) for line in lines[1:]}) == 1  # right-aligned columns, equal widths


def test_stats_of_real_files(shared_file):
    aug = dataset_stats(load_file(shared_file("gsm8k_aug/test.txt")))
    assert aug["count"] == 1319
    assert (aug["steps"]["min"], aug["steps"]["max"]) == (0, 8)  # some test lines have no CoT
    mult = dataset_stats(load_file(shared_file("mult_4x4/valid.txt")))
    # Every 4x4 product: one partial product per digit of b, eight answer digits.
    assert mult["steps"] == {"mean": 4.0, "min": 4, "max": 4}
    assert mult["answer_words"]["max"] == 8
