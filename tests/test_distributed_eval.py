"""`latentreason eval` launched as two processes (torchrun, gloo): each solves a shard, the main process
writes the report once, and the predictions are what one process makes of the same problems, in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentreason import cli
from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent


def chains(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "chains.json"
    params = "{num_steps: 3, min_steps: 1}"
    assert cli.main(["data", "generate", "--task", "chain", "-n", str(n), "--params", params, "--out", str(data)]) == 0
    return data


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_two_processes_evaluate_every_problem_once_and_report_once(tmp_path):
    final = run_training("cot", tiny_train_config(SFTConfig, tmp_path / "run", max_steps=2), progress=False).final_dir
    data = chains(tmp_path, 37)  # shards of 18 and 19
    args = ["eval", "--model", str(final), "--file", str(data), "--batch-size", "8", "--max-new-tokens", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "latentreason.cli", *args, "--output-dir", str(tmp_path / "two")]
    proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # the main process alone reports
    assert cli.main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    two, one = predictions(tmp_path / "two"), predictions(tmp_path / "one")
    assert len(two) == 37
    assert [(p["question"], p["generated"]) for p in two] == [(p["question"], p["generated"]) for p in one]
    summary = json.loads((tmp_path / "two" / "results.json").read_text())["results"][0]
    assert summary["n"] == 37


def test_device_is_refused_when_launched_as_several_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    data = chains(tmp_path, 3)
    code = cli.main(["eval", "--model", "unused", "--file", str(data), "--output-dir", "x", "--device", "cpu"])
    assert code == 2 and "--device" in capsys.readouterr().err
