"""Two CPU processes (torchrun, gloo) run the shared trainer: ranks stay identical, the result matches
one process with the same global batch, and sharded evaluation sees every problem exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentreason.data.sources import load_train_and_held_out
from latentreason.evaluation.harness import evaluate
from latentreason.methods import get_method
from latentreason.model.latent_lm import LatentLM
from latentreason.training.config import TrainConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent
# 2 processes x 8 sequences = a global batch of 16; 13 held-out problems split 6 + 7.
RUN = {"num_train_examples": 64, "per_device_train_batch_size": 8, "max_steps": 4, "num_eval_examples": 13}
RUN.update(learning_rate=3e-3, seed=2)
# DDP averages two 8-row gradients with an all-reduce; accumulation adds two halves: the same sum in
# another order, so float32 rounding is the only difference.
TOLERANCE = 1e-6


def torchrun_two(worker: str, out: Path, run: dict, timeout: int) -> Path:
    """Run tests/<worker> as two processes (torchrun, gloo) writing into `out`; fail with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += [str(REPO / "tests" / worker), str(out), json.dumps(run)]
    proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    return torchrun_two("distributed_worker.py", tmp_path_factory.mktemp("ddp"), RUN, timeout=120)


def test_parameters_are_identical_across_ranks(two_ranks):
    ranks = [load_file(str(two_ranks / f"rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name


def test_two_processes_match_one_process_with_the_same_global_batch(two_ranks, tmp_path):
    one = tiny_train_config(TrainConfig, tmp_path / "run", **{**RUN, "gradient_accumulation_steps": 2})
    single = load_file(str(run_training("cot", one, progress=False).final_dir / "model.safetensors"))
    ddp = load_file(str(two_ranks / "run" / "final" / "model.safetensors"))
    assert single.keys() == ddp.keys()
    worst = max(float((single[name] - ddp[name]).abs().max()) for name in single)
    print(f"largest difference from one process: {worst:.2e}")
    assert worst <= TOLERANCE, worst


def test_sharded_evaluation_gathers_every_problem_exactly_once(two_ranks):
    views = [json.loads((two_ranks / f"eval{r}.json").read_text()) for r in (0, 1)]
    assert views[0] == views[1]  # every rank gets the whole result
    config = tiny_train_config(TrainConfig, two_ranks / "unused", **RUN)
    held_out = load_train_and_held_out(config)[1]
    assert views[0]["n"] == len(held_out) == 13
    assert [r["question"] for r in views[0]["records"]] == [p.question for p in held_out]
    assert views[0]["one"] == 1  # one problem, two processes: one empty shard, nothing doubled
    # In order: the gathered generations are what one process makes of the same problems.
    lm = LatentLM.from_pretrained(two_ranks / "run" / "final").eval()
    alone = evaluate(get_method("cot")(config).solver(lm), held_out, progress=False)
    assert [r["generated"] for r in views[0]["records"]] == [r["generated"] for r in alone.records]


# --- GRPO over two ranks -------------------------------------------------------------------------
# 4 questions per step over 2 ranks, 4 rollouts each: each rank rolls out 2 whole groups of 4.
RL_RUN = {
    "dataset": "synthetic:chain",
    "dataset_params": {"num_steps": 2},
    "num_train_examples": 32,
    "num_eval_examples": 4,
    "questions_per_step": 4,
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_completion_length": 4,
    "max_new_tokens": 8,
    "learning_rate": 1e-3,
    "max_steps": 3,
    "seed": 4,
}


@pytest.fixture(scope="module")
def two_rl_ranks(tmp_path_factory) -> Path:
    return torchrun_two("distributed_rl_worker.py", tmp_path_factory.mktemp("ddp-rl"), RL_RUN, timeout=180)


def test_rl_groups_stay_whole_on_one_rank_and_advantages_are_per_group(two_rl_ranks):
    from latentreason.rl.config import RLConfig

    ranks = [json.loads((two_rl_ranks / f"rl{r}.json").read_text()) for r in (0, 1)]
    config = RLConfig(model_name_or_path="(in memory)", output_dir="unused", **RL_RUN)
    train = load_train_and_held_out(config)[0]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    g = config.num_generations
    for step in range(config.max_steps):
        both = [ranks[r][step] for r in (0, 1)]
        # The step's questions split by whole questions: each question and its whole group on one rank.
        expected = [train[i].question for i in order[step * 4 : step * 4 + 4]]
        assert both[0]["questions"] + both[1]["questions"] == expected
        for view in both:
            assert len(view["rewards"]) == len(view["questions"]) * g
            for q in range(len(view["questions"])):
                rewards = torch.tensor(view["rewards"][q * g : (q + 1) * g])
                advantages = torch.tensor(view["advantages"][q * g : (q + 1) * g])
                centred = rewards - rewards.mean()
                # Normalised by the group's own statistics (0 where the group's rewards are all equal).
                expected_adv = centred / (rewards.std() + 1e-4) if rewards.std() > 0 else torch.zeros(g)
                torch.testing.assert_close(advantages, expected_adv, atol=1e-5, rtol=1e-4)


def test_rl_parameters_are_identical_across_ranks(two_rl_ranks):
    ranks = [load_file(str(two_rl_ranks / f"rl_rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    start = build_atp_start()
    assert any(not torch.equal(start[k], ranks[0][k]) for k in start)  # the updates did happen


def build_atp_start() -> dict:
    """The workers' starting weights (built the same way), to check that training moved them."""
    from latentreason.methods.atp import ATPConfig, ATPLatent
    from tests.helpers import build_tiny_lm

    lm = build_tiny_lm("llama", seed=2)
    torch.manual_seed(0)
    ATPLatent(ATPConfig(c_thought=1, max_latent_stage=3, step_decoder="small", step_decoder_layers=1)).prepare(lm)
    return {k: v.detach().clone() for k, v in lm.state_dict().items()}
