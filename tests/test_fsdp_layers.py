"""FSDP with one unit per decoder layer (fsdp-layers.yaml) over two CPU processes: every call of a layer is a
collective, so the processes must make the same calls although their batches need different numbers of
latent slots (engine/lockstep.py pads them). One torchrun launch (distributed_fsdp_layers_worker.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from latentreason.data.sources import load_train_and_held_out
from latentreason.evaluation.harness import evaluate
from latentreason.methods import get_method
from latentreason.methods.coconut import CoconutConfig
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config
from tests.test_distributed import RL_RUN, TOLERANCE, check_rl_matches_ddp, largest_difference, torchrun_two

pytestmark = pytest.mark.distributed

# Every step latent (no curriculum) on chains of 1-3 steps, without padding thoughts to the longest: a row
# thinks as many latents as it has steps, and with two rows per process the processes' longest differ.
# 2 processes x 2 rows = a global batch of 4; 13 held-out problems split 6 + 7.
SFT_RUN = dict(
    dataset_params={"num_steps": 3, "min_steps": 1},
    num_train_examples=32,
    num_eval_examples=13,
    per_device_train_batch_size=2,
    max_steps=4,
    learning_rate=3e-3,
    seed=2,
    curriculum=False,
    pad_latent_to_max=False,
)
# What `accelerate launch --config_file latentreason/configs/accelerate/fsdp-layers.yaml` sets.
LAYERS_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
}


@pytest.fixture(scope="module")
def layer_ranks(tmp_path_factory) -> Path:
    runs = {"sft": SFT_RUN, "rl": RL_RUN}
    return torchrun_two("distributed_fsdp_layers_worker.py", tmp_path_factory.mktemp("layers"), runs, 240, LAYERS_ENV)


@pytest.fixture(scope="module")
def ddp_rl(tmp_path_factory) -> Path:
    return torchrun_two("distributed_rl_worker.py", tmp_path_factory.mktemp("ddp-rl"), {"rl": RL_RUN}, timeout=180)


def views(out: Path) -> list[dict]:
    return [json.loads((out / f"layers{r}.json").read_text()) for r in (0, 1)]


def test_every_decoder_layer_is_a_unit_and_each_value_lives_on_one_process(layer_ranks):
    v = views(layer_ranks)
    assert v[0]["units"] == v[0]["layers"] >= 2  # inside the model (the root unit is the module holding it)
    assert v[0]["total"] == v[1]["total"]
    assert v[0]["held"] + v[1]["held"] == v[0]["total"]
    assert 0 < v[0]["held"] < v[0]["total"]


def test_processes_with_different_thoughts_pad_and_match_one_process(layer_ranks, tmp_path):
    v = views(layer_ranks)
    # The runs really needed padding: some micro-batch on some process had shorter thoughts than the other's.
    assert any(count > 0 for view in v for count in view["padding"]), [view["padding"] for view in v]
    one = tiny_train_config(CoconutConfig, tmp_path / "one", **SFT_RUN, gradient_accumulation_steps=2)
    single = load_file(str(run_training("coconut", one, progress=False).final_dir / "model.safetensors"))
    layered = load_file(str(layer_ranks / "sft" / "final" / "model.safetensors"))
    worst = largest_difference(layered, single)
    print(f"per-layer FSDP: largest difference from one process {worst:.2e}")
    assert worst <= TOLERANCE, worst


def test_held_out_evaluation_scores_every_problem_once_in_order(layer_ranks):
    v = views(layer_ranks)
    assert v[0]["records"] == v[1]["records"] and v[0]["n"] == 13
    config = tiny_train_config(CoconutConfig, layer_ranks / "unused", **SFT_RUN)
    held_out = load_train_and_held_out(config)[1]
    assert [r["question"] for r in v[0]["records"]] == [p.question for p in held_out]
    lm = LatentLM.from_pretrained(layer_ranks / "sft" / "final").eval()
    alone = evaluate(get_method("coconut")(config).solver(lm), held_out, progress=False)
    assert [r["generated"] for r in v[0]["records"]] == [r["generated"] for r in alone.records]


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(layer_ranks):
    resumed = load_file(str(layer_ranks / "resumed" / "final" / "model.safetensors"))
    uninterrupted = load_file(str(layer_ranks / "sft" / "final" / "model.safetensors"))
    assert largest_difference(resumed, uninterrupted) == 0.0


def test_grpo_with_rollouts_of_different_lengths_matches_ddp(layer_ranks, ddp_rl):
    padding = [json.loads((layer_ranks / f"rl_padding{r}.json").read_text()) for r in (0, 1)]
    assert any(count > 0 for counts in padding for count in counts), padding
    check_rl_matches_ddp("per-layer FSDP", layer_ranks / "rl", ddp_rl)
