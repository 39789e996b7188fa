"""`latentreason bench decode --quick` runs end to end and compares like with like (timings are not tested)."""

from __future__ import annotations

import json

from latentreason import cli


def test_quick_decode_bench_prints_its_figures_and_ours_equals_generate(capsys):
    assert cli.main(["bench", "decode", "--quick", "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["same_tokens"] is True  # our greedy decoding gave generate's tokens
    for key in ("greedy_vs_generate", "soft_thinking_ratio", "swireasoning_ratio", "leave_speedup"):
        assert figures[key] > 0, key
