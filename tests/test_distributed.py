"""Two CPU processes (torchrun, gloo) run the shared trainers: ranks stay identical, the result matches
one process with the same global batch, and sharded evaluation sees every problem exactly once; the
same under FSDP (each process holding half the model) and DeepSpeed ZeRO-2 (each holding half the
optimizer state and gradients), where checkpoints also resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from latentreason.data.sources import load_train_and_held_out
from latentreason.errors import UserError
from latentreason.evaluation.harness import evaluate
from latentreason.methods import get_method
from latentreason.model.latent_lm import LatentLM
from latentreason.model.pretrained import load_pretrained
from latentreason.train_config import SFTConfig
from latentreason.training.backends import deepspeed
from latentreason.training.checkpoint import list_checkpoints
from latentreason.training.run import run_training
from tests.helpers import save_tiny_chat_model, tiny_train_config

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parent.parent
# 2 processes x 8 sequences = a global batch of 16; 13 held-out problems split 6 + 7.
RUN = {"num_train_examples": 64, "per_device_train_batch_size": 8, "max_steps": 4, "num_eval_examples": 13}
RUN.update(learning_rate=3e-3, seed=2)
# DDP averages two 8-row gradients with an all-reduce (FSDP with a reduce-scatter); accumulation adds two
# halves: the same sum in another order, so float32 rounding is the only difference.
TOLERANCE = 1e-6
# What `accelerate launch --config_file latentreason/configs/accelerate/fsdp.yaml` sets.
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "NO_WRAP"}


def torchrun_two(worker: str, out: Path, run: dict, timeout: int, env: dict | None = None) -> Path:
    """Run tests/<worker> as two processes (torchrun, gloo) writing into `out`; fail with its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
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


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """RUN in one process with the same global batch (two accumulated micro-batches); its output dir."""
    out = tmp_path_factory.mktemp("one") / "run"
    run_training("cot", tiny_train_config(SFTConfig, out, **RUN, gradient_accumulation_steps=2), progress=False)
    return out


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def grad_norms(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [row["grad_norm"] for row in rows if "grad_norm" in row]


def check_same_grad_norms(run: Path, reference: Path, rel: float = 1e-5) -> None:
    """Every step's gradient norm (before clipping, logged) is the reference run's. Weights after AdamW updates
    hardly change when every gradient is scaled (a sum over ranks or micro-batches instead of a mean), and
    clipping gives scaled gradients the same norm: comparing weights alone would not show it."""
    got, expected = grad_norms(run), grad_norms(reference)
    assert len(got) == len(expected) and any(norm > 0 for norm in expected)  # there were gradients to compare
    assert got == pytest.approx(expected, rel=rel), run.name


def test_two_processes_match_one_process_with_the_same_global_batch(two_ranks, one_process):
    single = load_file(str(one_process / "final" / "model.safetensors"))
    ddp = load_file(str(two_ranks / "run" / "final" / "model.safetensors"))
    worst = largest_difference(single, ddp)
    print(f"largest difference from one process: {worst:.2e}")
    assert worst <= TOLERANCE, worst
    check_same_grad_norms(two_ranks / "run", one_process)


def test_sharded_evaluation_gathers_every_problem_exactly_once(two_ranks):
    views = [json.loads((two_ranks / f"eval{r}.json").read_text()) for r in (0, 1)]
    assert views[0] == views[1]  # every rank gets the whole result
    config = tiny_train_config(SFTConfig, two_ranks / "unused", **RUN)
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
    "save_steps": 1,  # every step's model is kept (check_rl_matches_ddp compares the first)
    "save_total_limit": 0,
    "seed": 8,  # rollouts that leave each rank the shorter pass at least once (test_fsdp_layers)
    "reward_funcs": ["test_fewer_latents"],  # registered in distributed_rl_worker.py
    "reward_weights": [1.0],
}


# Coconut and ATP-Latent on chains of 1-4 steps, every step latent (no curriculum): a row thinks one latent a
# step, so a rank's longest thought is that of its longest local problem. With seed 6 the two ranks' longest
# thoughts differ on every step (rank 0 has the shorter one on steps 1 and 4, rank 1 on steps 2 and 3).
LATENT_RUN = {
    "dataset_params": {"num_steps": 4, "min_steps": 1},
    "num_train_examples": 64,
    "per_device_train_batch_size": 4,
    "max_steps": 4,
    "num_eval_examples": 5,
    "learning_rate": 3e-3,
    "seed": 6,
    "c_thought": 1,
    "max_latent_stage": 4,
    "curriculum": False,
}
ATP_RUN = {**LATENT_RUN, "step_decoder": "small", "step_decoder_layers": 1}


# GRPO on a tiny chat model thinking in Multiplex tokens (K = 2), with the same grouping over two ranks.
TOKEN_RL_RUN = {
    **RL_RUN,
    "max_completion_length": 6,
    "multiplex_width": 2,
    "reward_funcs": ["test_text_length"],  # registered in distributed_rl_worker.py
}


@pytest.fixture(scope="module")
def two_token_rl_ranks(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-token-rl")
    runs = {"token_rl": TOKEN_RL_RUN, "model_dir": str(save_tiny_chat_model(out / "chat"))}
    return torchrun_two("distributed_rl_worker.py", out, runs, timeout=180)


def test_rl_groups_stay_whole_on_one_rank_and_advantages_are_per_group(two_rl_ranks):
    check_groups_whole([json.loads((two_rl_ranks / f"rl{r}.json").read_text()) for r in (0, 1)], RL_RUN)


def test_token_rl_keeps_groups_whole_and_ranks_identical(two_token_rl_ranks):
    check_groups_whole(
        [json.loads((two_token_rl_ranks / f"token_rl{r}.json").read_text()) for r in (0, 1)], TOKEN_RL_RUN
    )
    ranks = [load_file(str(two_token_rl_ranks / f"token_rl_rank{r}.safetensors")) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])
    start = load_pretrained(str(two_token_rl_ranks / "chat")).state_dict()
    assert any(not torch.equal(start[k], ranks[0][k]) for k in start)  # the updates did happen


def check_groups_whole(ranks: list[list[dict]], run: dict) -> None:
    from latentreason.rl.config import RLConfig

    config = RLConfig(model_name_or_path="(in memory)", output_dir="unused", **run)
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
    # Each rank had groups whose rewards differ: were they all equal, every advantage would be 0 however the
    # rollouts were grouped.
    assert all(any(a != 0 for view in rank for a in view["advantages"]) for rank in ranks)


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


# --- FSDP over two ranks -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp_ranks(tmp_path_factory) -> Path:
    runs = {"sft": RUN, "rl": RL_RUN}
    return torchrun_two("distributed_fsdp_worker.py", tmp_path_factory.mktemp("fsdp"), runs, 180, FSDP_ENV)


def test_fsdp_shards_the_model_between_the_processes(fsdp_ranks):
    views = [json.loads((fsdp_ranks / f"fsdp{r}.json").read_text()) for r in (0, 1)]
    assert views[0]["total"] == views[1]["total"] > 0
    assert views[0]["held"] + views[1]["held"] == views[0]["total"]  # each value on exactly one process
    assert 0 < views[0]["held"] < views[0]["total"]


def test_fsdp_matches_one_process_and_ddp(fsdp_ranks, one_process, two_ranks):
    fsdp = load_file(str(fsdp_ranks / "sft" / "final" / "model.safetensors"))
    single = load_file(str(one_process / "final" / "model.safetensors"))
    ddp = load_file(str(two_ranks / "run" / "final" / "model.safetensors"))
    from_single, from_ddp = largest_difference(fsdp, single), largest_difference(fsdp, ddp)
    print(f"FSDP: largest difference from one process {from_single:.2e}, from DDP {from_ddp:.2e}")
    assert from_single <= TOLERANCE and from_ddp <= TOLERANCE, (from_single, from_ddp)
    check_same_grad_norms(fsdp_ranks / "sft", one_process)
    assert largest_difference(fsdp, load_file(str(fsdp_ranks / "sft" / "checkpoint-2" / "model.safetensors"))) > 0


def check_sharded_evaluation(views: list[dict], final: Path, method: str = "cot", run: dict = RUN) -> None:
    """Both ranks got the same records, every held-out problem once and in order, generated as one process
    generates them with the saved final model."""
    assert views[0]["records"] == views[1]["records"]
    config = tiny_train_config(get_method(method).config_cls, final / "unused", **run)
    held_out = load_train_and_held_out(config)[1]
    assert views[0]["n"] == len(held_out) == run["num_eval_examples"]
    assert [r["question"] for r in views[0]["records"]] == [p.question for p in held_out]
    lm = LatentLM.from_pretrained(final).eval()
    alone = evaluate(get_method(method)(config).solver(lm), held_out, progress=False)
    assert [r["generated"] for r in views[0]["records"]] == [r["generated"] for r in alone.records]


def test_fsdp_held_out_evaluation_scores_every_problem_once(fsdp_ranks):
    views = [json.loads((fsdp_ranks / f"fsdp{r}.json").read_text()) for r in (0, 1)]
    check_sharded_evaluation(views, fsdp_ranks / "sft" / "final")
    # The evaluation at step 2, in the middle of training, ran too (and the run still matched one process).
    log = [json.loads(line) for line in (fsdp_ranks / "sft" / "log.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log if "eval_accuracy" in m] == [2, 4]


def test_fsdp_checkpoints_rotate_and_resume_to_the_uninterrupted_run(fsdp_ranks):
    run = fsdp_ranks / "sft"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert not list(run.glob(".tmp-*"))
    resumed = load_file(str(fsdp_ranks / "resumed" / "final" / "model.safetensors"))
    uninterrupted = load_file(str(run / "final" / "model.safetensors"))
    assert largest_difference(resumed, uninterrupted) == 0.0


def test_an_fsdp_checkpoint_resumes_in_one_process(fsdp_ranks, one_process, tmp_path):
    """Whole tensors in the usual files: the step-2 checkpoint (optimizer moments included) continues in one
    process, with the same global batch, to what one process trains uninterrupted."""
    optimizer = torch.load(fsdp_ranks / "sft" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    lm = LatentLM.from_pretrained(fsdp_ranks / "sft" / "checkpoint-2")
    first_matrix = next(p for p in lm.parameters() if p.ndim == 2)  # the first of AdamW's first group
    assert optimizer["state"][0]["exp_avg"].shape == first_matrix.shape
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(fsdp_ranks / "sft" / "checkpoint-2", run / "checkpoint-2")
    one = tiny_train_config(SFTConfig, run, **RUN, gradient_accumulation_steps=2, resume_from_checkpoint="auto")
    resumed = load_file(str(run_training("cot", one, progress=False).final_dir / "model.safetensors"))
    worst = largest_difference(resumed, load_file(str(one_process / "final" / "model.safetensors")))
    print(f"FSDP checkpoint resumed in one process: largest difference {worst:.2e}")
    assert worst <= TOLERANCE, worst


# GRPO's advantages are centred per group, so many weights' gradients nearly cancel, and Adam's first updates
# (lr * g / (|g| + eps)) turn the rounding of another summation order into up to a few percent of lr in those
# few values (see PER_CALL_TOLERANCE). Measured at lr 1e-3 against DDP after three steps (on a machine where no
# draw flipped, see below): 2.9e-5 under FSDP and ZeRO-2, 3.7e-5 under ZeRO-3, 5.7e-6 under per-layer FSDP, with at
# most 38 of 70,946 values more than TOLERANCE apart; after the first step under ZeRO-3 on an AMD EPYC: 1.6e-6, one
# value apart. A gradient that is really different (another rollout, a missing reduction) moves most weights by
# about lr.
RL_TOLERANCE = 1e-4
RL_VALUES_APART = 100


def check_rl_matches_ddp(launch: str, run: Path, two_rl_ranks: Path) -> None:
    """The first GRPO step of `run` equals the DDP run's (weights within RL_TOLERANCE, all but RL_VALUES_APART
    values within TOLERANCE; the gradient norm); its final model loads and has moved from the start.

    Only the first step: it samples from the very same weights in both runs, so its rollouts are the same.
    Later rollouts are sampled from weights that differ by rounding, and a draw that falls that close to the
    boundary between two tokens picks another one (seen on an AMD EPYC at step 2: one answer token of 64
    rollouts), after which the runs rightly part. Sharded optimizer state over several steps is compared on
    the deterministic SFT runs."""
    trained = LatentLM.from_pretrained(run / "checkpoint-1").state_dict()
    ddp = LatentLM.from_pretrained(two_rl_ranks / "rl" / "checkpoint-1").state_dict()
    worst = largest_difference(trained, ddp)
    apart = sum(int(((trained[k] - ddp[k]).abs() > TOLERANCE).sum()) for k in ddp)
    print(f"{launch} GRPO step 1: largest difference from DDP {worst:.2e}, {apart} values more than {TOLERANCE} apart")
    assert worst <= RL_TOLERANCE and apart <= RL_VALUES_APART, (worst, apart)
    first = grad_norms(run)[0]
    assert first > 0 and first == pytest.approx(grad_norms(two_rl_ranks / "rl")[0], rel=1e-5)
    final = LatentLM.from_pretrained(run / "final").state_dict()
    start = build_atp_start()
    assert any(not torch.equal(start[k], final[k]) for k in start)  # the updates did happen


def test_fsdp_rl_matches_ddp_and_saves_a_loadable_model(fsdp_ranks, two_rl_ranks):
    check_rl_matches_ddp("FSDP", fsdp_ranks / "rl", two_rl_ranks)


# --- DeepSpeed ZeRO-2 over two ranks -------------------------------------------------------------
# What `accelerate launch --config_file latentreason/configs/accelerate/deepspeed-zero2.yaml` sets.
DEEPSPEED_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}


@pytest.fixture(scope="module")
def deepspeed_ranks(tmp_path_factory) -> Path:
    runs = {"sft": RUN, "rl": RL_RUN}
    return torchrun_two("distributed_deepspeed_worker.py", tmp_path_factory.mktemp("ds"), runs, 180, DEEPSPEED_ENV)


def test_deepspeed_zero2_matches_one_process_with_and_without_accumulation(deepspeed_ranks, one_process):
    ranks = [load_file(str(deepspeed_ranks / f"rank{r}.safetensors")) for r in (0, 1)]
    assert largest_difference(ranks[0], ranks[1]) == 0.0
    single = load_file(str(one_process / "final" / "model.safetensors"))
    plain = largest_difference(load_file(str(deepspeed_ranks / "sft" / "final" / "model.safetensors")), single)
    accum = largest_difference(load_file(str(deepspeed_ranks / "accum" / "final" / "model.safetensors")), single)
    print(f"ZeRO-2: largest difference from one process {plain:.2e}, with accumulation {accum:.2e}")
    assert plain <= TOLERANCE and accum <= TOLERANCE, (plain, accum)
    check_same_grad_norms(deepspeed_ranks / "sft", one_process)
    check_same_grad_norms(deepspeed_ranks / "accum", one_process)
    # The optimizer state really is split: one partition per process, no whole optimizer.pt.
    checkpoint = deepspeed_ranks / "sft" / "checkpoint-2"
    assert deepspeed.saved_world_size(checkpoint) == 2 and not (checkpoint / "optimizer.pt").exists()
    final = LatentLM.from_pretrained(deepspeed_ranks / "sft" / "final").state_dict()
    assert largest_difference(final, ranks[0]) == 0.0


def test_deepspeed_held_out_evaluation_scores_every_problem_once(deepspeed_ranks):
    views = [json.loads((deepspeed_ranks / f"eval{r}.json").read_text()) for r in (0, 1)]
    check_sharded_evaluation(views, deepspeed_ranks / "sft" / "final")


def test_deepspeed_checkpoint_resumes_to_the_uninterrupted_run(deepspeed_ranks):
    assert [p.name for p in list_checkpoints(deepspeed_ranks / "sft")] == ["checkpoint-2", "checkpoint-4"]
    assert not list((deepspeed_ranks / "sft").glob(".tmp-*"))
    resumed = load_file(str(deepspeed_ranks / "resumed" / "final" / "model.safetensors"))
    uninterrupted = load_file(str(deepspeed_ranks / "sft" / "final" / "model.safetensors"))
    assert largest_difference(resumed, uninterrupted) == 0.0


def test_a_deepspeed_checkpoint_refuses_another_world_size_or_launch(deepspeed_ranks, tmp_path):
    checkpoint = deepspeed_ranks / "sft" / "checkpoint-2"
    with pytest.raises(UserError, match="optimizer partitions of 2 processes but this run has 1"):
        deepspeed.load_engine_state(None, checkpoint, world=1)
    zero3_engine = SimpleNamespace(zero_optimization_partition_weights=lambda: True)
    with pytest.raises(UserError, match="written under DeepSpeed ZeRO-1 or 2 but this run uses ZeRO-3"):
        deepspeed.load_engine_state(zero3_engine, checkpoint, world=2)
    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "checkpoint-2")
    one = tiny_train_config(SFTConfig, run, **RUN, resume_from_checkpoint="auto")
    with pytest.raises(UserError, match="written under DeepSpeed"):
        run_training("cot", one, progress=False)


def check_fp32_master_saved(out: Path) -> None:
    """The engine trained a bf16 copy of fp32 master weights (out/bf16_rank0.safetensors, whole); the final
    model in out/bf16 holds the fp32 ones, as DDP's."""
    saved = load_file(str(out / "bf16" / "final" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in saved.values())
    final = LatentLM.from_pretrained(out / "bf16" / "final").state_dict()
    live = load_file(str(out / "bf16_rank0.safetensors"))
    assert final.keys() == live.keys() and all(v.dtype == torch.bfloat16 for v in live.values())
    assert all(torch.equal(final[k].to(torch.bfloat16), live[k]) for k in final)  # live = master rounded
    assert any(not torch.equal(final[k], live[k].float()) for k in final)  # more than bf16 precision


def test_deepspeed_bf16_saves_the_fp32_master_weights(deepspeed_ranks):
    check_fp32_master_saved(deepspeed_ranks)


def test_deepspeed_nan_loss_on_one_rank_skips_the_update_on_both(deepspeed_ranks):
    run = deepspeed_ranks / "nan"
    weights = [load_file(str(run / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2, 3)]
    assert largest_difference(weights[0], weights[1]) == 0.0  # step 2 skipped (its finite-gradient update too)
    assert largest_difference(weights[1], weights[2]) > 0  # step 3 trains again
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    log = [m for m in rows if "eval_accuracy" not in m]
    assert [m["skipped_nonfinite"] for m in log] == [0, 1, 1, 1]
    assert "loss" not in log[1]


def test_deepspeed_rl_matches_ddp_and_saves_a_loadable_model(deepspeed_ranks, two_rl_ranks):
    check_rl_matches_ddp("ZeRO-2", deepspeed_ranks / "rl", two_rl_ranks)


def test_deepspeed_nonfinite_steps_in_a_row_stop_every_rank_with_the_last_good_checkpoint(deepspeed_ranks):
    for rank in (0, 1):
        message = (deepspeed_ranks / f"stop{rank}.txt").read_text()
        assert "step 3: " in message and "2 steps in a row (max_nonfinite_steps=2)" in message
    run = deepspeed_ranks / "stop"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1", "checkpoint-2"]
    good, last = (load_file(str(run / f"checkpoint-{s}" / "model.safetensors")) for s in (1, 2))
    assert largest_difference(good, last) == 0.0
    assert not (run / "final").exists() and not list(run.glob(".tmp-*"))


# --- DeepSpeed ZeRO-3 over two ranks -------------------------------------------------------------
# What `accelerate launch --config_file latentreason/configs/accelerate/deepspeed-zero3.yaml` sets.
ZERO3_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
# CODI with rank-2 LoRA adapters on every linear layer; no dropout, so one process draws nothing different.
LORA_RUN = {"num_train_examples": 32, "per_device_train_batch_size": 4, "max_steps": 2, "num_eval_examples": 0}
LORA_RUN.update(num_latents=2, lora_r=2, lora_dropout=0.0)
# ZeRO-3 (and per-layer FSDP, test_fsdp_layers.py) compute the same gradients in another order: hooks add
# autograd nodes around every unit and reduce each call's contribution separately, which changes the order
# in which a weight's contributions from the latent pass's many calls are summed. Float rounding then
# differs, and Adam's first updates (lr * g / (|g| + eps)) turn a rounding difference in a gradient that
# nearly cancels to 0 into up to a few percent of lr in that one value (4.2e-5 in one of 53,666 values with
# another seed). Measured here over 4 steps at lr 3e-3: Coconut 7.3e-7 from one process, ATP-Latent 4.8e-7
# from DDP, LoRA 4.5e-7 from one process (per-layer FSDP: 4.9e-7, 8.3e-7, 3.7e-9).
PER_CALL_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def zero3_ranks(tmp_path_factory) -> Path:
    runs = {"coconut": LATENT_RUN, "atp": ATP_RUN, "lora": LORA_RUN, "rl": RL_RUN}
    return torchrun_two("distributed_zero3_worker.py", tmp_path_factory.mktemp("zero3"), runs, 300, ZERO3_ENV)


def zero3_views(zero3_ranks: Path) -> list[dict]:
    return [json.loads((zero3_ranks / f"zero3_{r}.json").read_text()) for r in (0, 1)]


def one_process_run(method: str, out: Path, run: dict) -> Path:
    """`run` trained in one process with the two ranks' global batch (two accumulated micro-batches)."""
    from tests.distributed_latent import latent_config

    run_training(method, latent_config(method, out, {**run, "gradient_accumulation_steps": 2}), progress=False)
    return out


@pytest.fixture(scope="module")
def one_process_coconut(tmp_path_factory) -> Path:
    run = {**LATENT_RUN, "num_eval_examples": 0, "save_steps": 2}
    return one_process_run("coconut", tmp_path_factory.mktemp("one-coconut") / "run", run)


def check_padded(passes: list[list[list[int]]]) -> None:
    """Both ranks ran every latent pass to the longer of their longest thoughts, and each was the shorter
    one at least once (its pass padded)."""
    assert len(passes[0]) == len(passes[1]) > 0
    for (n0, agreed0), (n1, agreed1) in zip(*passes):
        assert agreed0 == agreed1 == max(n0, n1)
    assert all(any(n < agreed for n, agreed in rank) for rank in passes)


def test_zero3_latent_sft_pads_its_passes_and_matches_one_process(zero3_ranks, one_process_coconut):
    check_padded([view["passes"] for view in zero3_views(zero3_ranks)])
    single = load_file(str(one_process_coconut / "final" / "model.safetensors"))
    zero3 = load_file(str(zero3_ranks / "coconut" / "final" / "model.safetensors"))
    worst = largest_difference(zero3, single)
    print(f"ZeRO-3 Coconut: largest difference from one process {worst:.2e}")
    assert worst <= PER_CALL_TOLERANCE, worst
    check_same_grad_norms(zero3_ranks / "coconut", one_process_coconut)
    # The whole weights each rank gathers at the end are the same, and what the final model holds.
    ranks = [load_file(str(zero3_ranks / f"rank{r}.safetensors")) for r in (0, 1)]
    assert largest_difference(ranks[0], ranks[1]) == 0.0
    final = LatentLM.from_pretrained(zero3_ranks / "coconut" / "final").state_dict()
    assert largest_difference(final, ranks[0]) == 0.0


def test_zero3_keeps_half_of_every_parameter_on_each_process(zero3_ranks):
    views = zero3_views(zero3_ranks)
    total = views[0]["total"]
    held = [view["held"] / total for view in views]
    rest = [view["whole_between_steps"] / total for view in views]
    first, most = ([f(view["whole_in_forwards"]) / total for view in views] for f in (lambda w: w[0], max))
    print(f"ZeRO-3 values per rank: partition {held}, whole between steps {rest}; whole at once in the first")
    print(f"training forward {first}, in any {most}")
    # Each tensor is cut in two (rounded up to the world size): the two partitions hold it about once.
    assert all(0.5 <= fraction < 0.51 for fraction in held)
    assert all(fraction == 0 for fraction in rest)
    # While DeepSpeed records the calls' order (the first forward, and whenever the order changes) it frees
    # each submodule's parameters after its call. Once recorded, it keeps a parameter that is used again
    # soon (stage3_max_reuse_distance, 1e9 values by default) whole: the latent pass reuses every layer.
    assert all(fraction < 0.5 for fraction in first)


def test_zero3_held_out_evaluation_scores_every_problem_once(zero3_ranks):
    check_sharded_evaluation(zero3_views(zero3_ranks), zero3_ranks / "coconut" / "final", "coconut", LATENT_RUN)
    # The evaluation at step 2 ran too, between training steps (which then still matched one process).
    log = [json.loads(line) for line in (zero3_ranks / "coconut" / "log.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log if "eval_accuracy" in m] == [2, 4]


def test_zero3_checkpoints_hold_the_whole_model_and_resume_to_the_uninterrupted_run(zero3_ranks, one_process_coconut):
    run = zero3_ranks / "coconut"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    checkpoint = run / "checkpoint-2"
    assert deepspeed.saved_world_size(checkpoint) == 2 and not (checkpoint / "optimizer.pt").exists()
    zero2_engine = SimpleNamespace(zero_optimization_partition_weights=lambda: False)
    with pytest.raises(UserError, match="written under DeepSpeed ZeRO-3 but this run uses ZeRO-1 or 2"):
        deepspeed.load_engine_state(zero2_engine, checkpoint, world=2)
    whole = LatentLM.from_pretrained(checkpoint).state_dict()
    single = LatentLM.from_pretrained(one_process_coconut / "checkpoint-2").state_dict()
    assert largest_difference(whole, single) <= PER_CALL_TOLERANCE
    resumed = load_file(str(zero3_ranks / "resumed" / "final" / "model.safetensors"))
    assert largest_difference(resumed, load_file(str(run / "final" / "model.safetensors"))) == 0.0


def test_zero3_atp_latent_sft_matches_ddp(zero3_ranks, two_rl_ranks):
    """ATP-Latent calls its latent head once a slot and its step decoder once a micro-batch (a dummy where
    the rank has no step to decode): padded to the same calls on both ranks, its heads train as under DDP."""
    check_padded([json.loads((zero3_ranks / f"atp{r}.json").read_text()) for r in (0, 1)])
    zero3 = LatentLM.from_pretrained(zero3_ranks / "atp" / "final").state_dict()
    ddp = LatentLM.from_pretrained(two_rl_ranks / "atp" / "final").state_dict()
    assert any(k.startswith("heads.latent_head.") for k in zero3) and any(
        k.startswith("heads.step_decoder.") for k in zero3
    )
    worst = largest_difference(zero3, ddp)
    print(f"ZeRO-3 ATP-Latent: largest difference from DDP {worst:.2e}")
    assert worst <= PER_CALL_TOLERANCE, worst
    check_same_grad_norms(zero3_ranks / "atp", two_rl_ranks / "atp")


def test_zero3_bf16_saves_the_fp32_master_weights(zero3_ranks):
    """Gathered from the master partitions (the live bf16 ones were gathered by the worker)."""
    check_fp32_master_saved(zero3_ranks)


def test_zero3_trains_lora_adapters_as_one_process(zero3_ranks, tmp_path):
    """The saved model merges the adapters (gathered whole for the merge) into plain weights."""
    one = one_process_run("codi", tmp_path / "run", LORA_RUN)
    zero3 = load_file(str(zero3_ranks / "lora" / "final" / "model.safetensors"))
    assert not any("lora" in k for k in zero3)
    worst = largest_difference(zero3, load_file(str(one / "final" / "model.safetensors")))
    print(f"ZeRO-3 LoRA: largest difference from one process {worst:.2e}")
    assert worst <= PER_CALL_TOLERANCE, worst
    check_same_grad_norms(zero3_ranks / "lora", one)
    start = LatentLM.from_pretrained(zero3_ranks / "lora" / "checkpoint-2").state_dict()
    assert start.keys() == LatentLM.from_pretrained(zero3_ranks / "lora" / "final").state_dict().keys()


def test_zero3_rl_matches_ddp_and_saves_a_loadable_model(zero3_ranks, two_rl_ranks):
    check_rl_matches_ddp("ZeRO-3", zero3_ranks / "rl", two_rl_ranks)
