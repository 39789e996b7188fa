"""The DeepSpeed launches the training loops refuse, each with one line (the ZeRO-2 runs themselves are in
test_distributed.py)."""

from __future__ import annotations

import sys

import pytest

from latentreason.errors import UserError
from latentreason.training import deepspeed
from latentreason.training.config import TrainConfig
from tests.helpers import tiny_train_config


@pytest.fixture
def config(tmp_path, monkeypatch) -> TrainConfig:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # what accelerator_kwargs sets on CPU, undone afterwards
    return tiny_train_config(TrainConfig, tmp_path / "run")


def test_a_deepspeed_launch_without_deepspeed_installed_says_how_to_install_it(config, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what a missing package looks like to `import`
    with pytest.raises(UserError, match=r"DeepSpeed but it is not installed .*latentreason\[deepspeed\]"):
        deepspeed.accelerator_kwargs(config, "no")


def test_zero_stage_3_is_refused_with_what_to_use(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(UserError, match="ZeRO stage 3 is not supported; use zero_stage 1 or 2, or FSDP"):
        deepspeed.accelerator_kwargs(config, "no")


def test_a_deepspeed_config_file_is_refused(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json")
    with pytest.raises(UserError, match="deepspeed_config_file is not supported"):
        deepspeed.accelerator_kwargs(config, "no")


def test_the_engine_config_comes_from_the_recipe(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    config.gradient_accumulation_steps, config.max_grad_norm = 3, 0.0
    kwargs = deepspeed.accelerator_kwargs(config, "bf16")
    ds_config = kwargs["deepspeed_plugin"].hf_ds_config.config
    assert ds_config["zero_optimization"]["stage"] == 1
    assert ds_config["gradient_accumulation_steps"] == kwargs["gradient_accumulation_plugin"].num_steps == 3
    assert ds_config["train_micro_batch_size_per_gpu"] == config.per_device_train_batch_size
    assert ds_config["gradient_clipping"] == 0.0 and ds_config["bf16"]["enabled"]
    assert kwargs["cpu"] is False
