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
from latentreason.methods.codi import CODIConfig
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config
from tests.test_distributed import (
    ATP_RUN,
    LATENT_RUN,
    PER_CALL_TOLERANCE,
    RL_RUN,
    check_padded,
    check_rl_matches_ddp,
    check_same_grad_norms,
    largest_difference,
    torchrun_two,
)

pytestmark = pytest.mark.distributed

# test_distributed.py's Coconut run on chains of 1-4 steps (every step latent; each process has the shorter
# longest thought on some steps), with 13 held-out problems split 6 + 7.
SFT_RUN = {**LATENT_RUN, "num_eval_examples": 13}
# CODI with LoRA (no dropout on the adapters' path: one process would draw other masks), 2 x 4 rows.
LORA_RUN = dict(num_train_examples=32, per_device_train_batch_size=4, max_steps=3, seed=3, lora_r=4, lora_dropout=0.0)
# What `accelerate launch --config_file latentreason/configs/accelerate/fsdp-layers.yaml` sets.
LAYERS_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
}


@pytest.fixture(scope="module")
def layer_ranks(tmp_path_factory) -> Path:
    runs = {"sft": SFT_RUN, "rl": RL_RUN, "atp": ATP_RUN, "lora": LORA_RUN}
    return torchrun_two("distributed_fsdp_layers_worker.py", tmp_path_factory.mktemp("layers"), runs, 240, LAYERS_ENV)


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
    check_padded([view["passes"] for view in v])  # each process was the shorter one at least once
    one = tiny_train_config(CoconutConfig, tmp_path / "one", **SFT_RUN, gradient_accumulation_steps=2)
    single = load_file(str(run_training("coconut", one, progress=False).final_dir / "model.safetensors"))
    layered = load_file(str(layer_ranks / "sft" / "final" / "model.safetensors"))
    worst = largest_difference(layered, single)
    print(f"per-layer FSDP: largest difference from one process {worst:.2e}")
    assert worst <= PER_CALL_TOLERANCE, worst
    check_same_grad_norms(layer_ranks / "sft", tmp_path / "one")


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


def test_grpo_with_rollouts_of_different_lengths_matches_ddp(layer_ranks, two_rl_ranks):
    # The recompute feeds the drawn thoughts in one call: no sequential latent pass to pad across ranks.
    assert [json.loads((layer_ranks / f"rl_passes{r}.json").read_text()) for r in (0, 1)] == [[], []]
    check_rl_matches_ddp("per-layer FSDP", layer_ranks / "rl", two_rl_ranks)


def test_atp_latent_sft_with_padded_passes_matches_ddp(layer_ranks, two_rl_ranks):
    """Padded slots draw no noise: the ATP-Latent heads train as under DDP."""
    check_padded([json.loads((layer_ranks / f"atp_passes{r}.json").read_text()) for r in (0, 1)])
    layered = LatentLM.from_pretrained(layer_ranks / "atp" / "final").state_dict()
    ddp = LatentLM.from_pretrained(two_rl_ranks / "atp" / "final").state_dict()
    worst = largest_difference(layered, ddp)
    print(f"per-layer FSDP ATP-Latent: largest difference from DDP {worst:.2e}")
    assert worst <= PER_CALL_TOLERANCE, worst
    check_same_grad_norms(layer_ranks / "atp", two_rl_ranks / "atp")


def test_lora_trains_under_fsdp_and_saves_the_merged_model(layer_ranks, tmp_path):
    """The adapters and special-token rows gathered from the shards and folded into the base weights."""
    one = tiny_train_config(CODIConfig, tmp_path / "one", **LORA_RUN, gradient_accumulation_steps=2)
    single = load_file(str(run_training("codi", one, progress=False).final_dir / "model.safetensors"))
    layered = load_file(str(layer_ranks / "lora" / "final" / "model.safetensors"))
    assert not any("lora_" in name or "token_adapter" in name for name in layered)  # a plain model
    worst = largest_difference(layered, single)
    print(f"per-layer FSDP with LoRA: largest difference from one process {worst:.2e}")
    assert worst <= PER_CALL_TOLERANCE, worst
    check_same_grad_norms(layer_ranks / "lora", tmp_path / "one")
