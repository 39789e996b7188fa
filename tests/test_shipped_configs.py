"""Every shipped recipe parses, validates, and runs an optimizer step (on a tiny model on CPU)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from latentreason.config import load_config, read_yaml
from latentreason.methods import METHODS, get_method
from latentreason.methods.sft import TextSFT
from latentreason.model.pretrained import PRETRAINED
from latentreason.recipes import RL_METHODS, SHIPPED_CONFIGS, recipe_method, resolve_config_path
from latentreason.rl.config import RLConfig
from latentreason.rl.run import run_rl
from latentreason.training.run import run_training
from tests.helpers import save_tiny_chat_model

RECIPES = sorted(SHIPPED_CONFIGS.glob("*.yaml"))
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def test_recipes_are_shipped():
    names = {p.stem for p in RECIPES}
    assert {
        "cot-tiny",
        "no-cot-tiny",
        "coconut-tiny",
        "cot-llama1b-gsm8k-aug",
        "no-cot-llama1b-gsm8k-aug",
        "coconut-llama1b-gsm8k-aug",
        "atp-rl-tiny",
        "atp-rl-llama1b-gsm8k-aug",
        "colar-rl-tiny",
        "colar-rl-llama1b-gsm8k-aug",
        "soft-tokens-llama3.2-3b-gsm8k",
        "multiplex-r1-distill-qwen7b-deepscaler",
        "empo-qwen2.5-math-1.5b-numina20k",
    } <= names


def test_rl_recipes_start_from_the_methods_with_latent_actions_a_text_method_or_a_pretrained_model():
    latent = {name for name, cls in METHODS.items() if cls.latent_actions is not None}
    text = {name for name, cls in METHODS.items() if issubclass(cls, TextSFT)}
    assert latent | {PRETRAINED, "cot"} <= set(RL_METHODS.values()) <= latent | text | {PRETRAINED}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_one_step_on_a_tiny_model(recipe: Path, tmp_path):
    method = recipe_method(recipe)
    if read_yaml(recipe).get("lora_r") and importlib.util.find_spec("peft") is None:
        pytest.skip("LoRA recipe: peft is not installed (pip install 'latentreason[lora]')")
    assert resolve_config_path(recipe.stem) == recipe
    # Paper-scale recipes name a hub model and a benchmark; swap in a tiny model and generated data
    # so the recipe's own optimisation settings are exercised offline.
    overrides = {
        "model_name_or_path": "tiny",
        "tiny_model": TINY,
        "dataset": "synthetic:chain",
        "dataset_params": {"num_steps": 2},
        "num_train_examples": 64,
        "num_eval_examples": 4,
        "per_device_train_batch_size": 8,
        "max_steps": 1,
        "output_dir": str(tmp_path / "run"),
    }
    if RL_METHODS.get(method) == PRETRAINED:
        # A pretrained chat model's recipe: a tiny chat model stands in for it (LoRA through peft, as shipped).
        rl_overrides = {k: v for k, v in overrides.items() if k not in ("tiny_model", "per_device_train_batch_size")}
        model_dir = save_tiny_chat_model(tmp_path / "chat")
        rl_overrides.update(model_name_or_path=str(model_dir), output_dir=str(tmp_path / "rl"), questions_per_step=2)
        rl_overrides.update(num_generations=2, per_device_train_batch_size=4, max_completion_length=4, max_new_tokens=4)
        rl_overrides.update(gradient_accumulation_steps=1)  # the 4 rollouts make one update, whatever the GPU recipe's
        if read_yaml(recipe).get("max_thinking_steps"):  # soft thinking: room for an answer in 4 steps
            rl_overrides.update(max_thinking_steps=1)
        result = run_rl(load_config(RLConfig, recipe, rl_overrides), progress=False)
    elif method in RL_METHODS:
        # RL starts from an SFT model of its method: train one for a step, then run the recipe's settings on it.
        sft_method = RL_METHODS[method]
        sft = run_training(sft_method, load_config(get_method(sft_method).config_cls, None, overrides), progress=False)
        rl_overrides = {k: v for k, v in overrides.items() if k not in ("tiny_model", "per_device_train_batch_size")}
        rl_overrides.update(
            model_name_or_path=str(sft.final_dir), output_dir=str(tmp_path / "rl"), questions_per_step=4
        )
        rl_overrides.update(num_generations=2, per_device_train_batch_size=4, max_completion_length=4)
        result = run_rl(load_config(RLConfig, recipe, rl_overrides), progress=False)
    else:
        config_cls = get_method(method).config_cls
        if "assistant_model_name_or_path" in {f.name for f in dataclasses.fields(config_cls)}:  # SoftCoT's 2nd model
            overrides.update(assistant_model_name_or_path="tiny", assistant_tiny_model=TINY)
        result = run_training(method, load_config(config_cls, recipe, overrides), progress=False)
    assert result.global_step == 1
    weights = ("model.safetensors", "soft_thoughts.safetensors")  # a soft-thought model keeps its trained part
    assert any((result.final_dir / name).is_file() for name in weights)


def test_shipped_accelerate_ddp_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(SHIPPED_CONFIGS / "accelerate" / "ddp.yaml"))
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.mixed_precision == "no"  # the recipe's bf16 field decides


@pytest.mark.parametrize(("name", "policy"), [("fsdp.yaml", "NO_WRAP"), ("fsdp-layers.yaml", "TRANSFORMER_BASED_WRAP")])
def test_shipped_accelerate_fsdp_configs_ask_for_what_the_loops_support(name, policy):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(SHIPPED_CONFIGS / "accelerate" / name))
    assert config.distributed_type == DistributedType.FSDP
    assert config.mixed_precision == "no"
    fsdp = config.fsdp_config
    assert (fsdp["fsdp_version"], fsdp["fsdp_auto_wrap_policy"]) == (2, policy)  # see training/backends/fsdp.py


@pytest.mark.parametrize(("name", "stage"), [("deepspeed-zero2.yaml", 2), ("deepspeed-zero3.yaml", 3)])
def test_shipped_accelerate_deepspeed_configs_ask_for_what_the_loops_support(name, stage, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from latentreason.training.backends import deepspeed

    config = load_config_from_file(str(SHIPPED_CONFIGS / "accelerate" / name))
    assert config.distributed_type == DistributedType.DEEPSPEED and config.mixed_precision == "no"
    settings = config.deepspeed_config
    assert settings["zero_stage"] == stage and settings["zero3_init_flag"] is False
    # What `accelerate launch` sets from them passes the loops' checks (see training/backends/deepspeed.py).
    for key in ("zero_stage", "offload_optimizer_device", "offload_param_device", "zero3_init_flag"):
        variable = "ZERO3_INIT" if key == "zero3_init_flag" else key.upper()
        monkeypatch.setenv(f"ACCELERATE_DEEPSPEED_{variable}", str(settings[key]).lower())
    assert deepspeed._stage() == stage
