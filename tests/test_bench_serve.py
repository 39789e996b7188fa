"""`latentreason bench serve --quick` runs end to end: every request and the soak succeed and the JSON line has its
figures (timings themselves are not tested)."""

from __future__ import annotations

import json

import pytest

from latentreason import cli

pytest.importorskip("uvicorn")


def test_quick_serve_bench_prints_its_figures(capsys):
    assert cli.main(["bench", "serve", "--quick", "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["requests"] == 8 and figures["soak_requests"] == 40
    assert figures["soak_errors"] == 0
    ratios = ("serve_throughput_ratio", "soft_thinking_throughput_ratio", "latent_throughput_ratio")
    for key in (*ratios, "p50_s", "p99_s"):
        assert figures[key] > 0, key
    assert figures["p50_s"] <= figures["p99_s"]
