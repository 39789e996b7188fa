"""`latentreason bench tts --quick` runs end to end and its batched trajectories are the separate solves'
(timings are not tested)."""

from __future__ import annotations

import json

from latentreason import cli


def test_quick_tts_bench_prints_its_figures_and_batched_equals_separate(capsys):
    assert cli.main(["bench", "tts", "--quick", "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["same_answers"] is True  # each batched sample answered as its separate solve did
    assert figures["samples"] == 4
    for key in ("tts_speedup", "tts_speedup_dropout"):
        assert figures[key] > 0, key
