"""The multi-node command line, emulated on one machine: two torchrun launches of one process each,
`--nnodes 2 --node-rank 0|1` meeting at a master address and port (static rendezvous), sharing the
output directory as machines must. The run must equal one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config
from tests.test_distributed import REPO, RUN, TOLERANCE

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_node(rank: int, port: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank)]
    command += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    command += [str(REPO / "tests" / "distributed_worker.py"), str(out), json.dumps(RUN)]
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_nodes_of_one_process_train_like_one_process(tmp_path):
    out, port = tmp_path / "nodes", free_port()
    out.mkdir()
    nodes = [launch_node(rank, port, out) for rank in (0, 1)]
    try:
        errors = [node.communicate(timeout=180)[1].decode()[-3000:] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], errors
    ranks = [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    one = tiny_train_config(SFTConfig, tmp_path / "one", **{**RUN, "gradient_accumulation_steps": 2})
    single = load_file(str(run_training("cot", one, progress=False).final_dir / "model.safetensors"))
    nodes_final = load_file(str(out / "run" / "final" / "model.safetensors"))  # written by global rank 0 only
    worst = max(float((single[name] - nodes_final[name]).abs().max()) for name in single)
    assert worst <= TOLERANCE, worst
