"""The DeepSpeed config built from the recipe, and the launches the training loops refuse, each with one line
(the ZeRO-2 and ZeRO-3 runs themselves are in test_distributed.py)."""

from __future__ import annotations

import pickle
import sys
import types

import pytest
import torch

from latentreason.errors import UserError
from latentreason.train_config import SFTConfig
from latentreason.training.backends import deepspeed
from tests.helpers import tiny_train_config

HIDDEN = 32  # the model width accelerator_kwargs sizes ZeRO-3's buckets from


@pytest.fixture
def config(tmp_path, monkeypatch) -> SFTConfig:
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # what accelerator_kwargs sets on CPU, undone afterwards
    return tiny_train_config(SFTConfig, tmp_path / "run")


def test_a_deepspeed_launch_without_deepspeed_installed_says_how_to_install_it(config, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what a missing package looks like to `import`
    with pytest.raises(UserError, match=r"DeepSpeed but it is not installed .*latentreason\[deepspeed\]"):
        deepspeed.accelerator_kwargs(config, "no", HIDDEN)


def test_an_unknown_zero_stage_is_refused(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "4")
    with pytest.raises(UserError, match="ZeRO stage 4 is not supported; use zero_stage 1, 2 or 3"):
        deepspeed.accelerator_kwargs(config, "no", HIDDEN)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu", "offload_optimizer_device is not supported"),
        ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "nvme", "offload_param_device is not supported"),
        ("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true", "zero3_init_flag: true is not supported: every process builds"),
    ],
)
def test_settings_the_recipe_config_would_ignore_are_refused(config, monkeypatch, variable, value, message):
    """What `accelerate launch` sets from the accelerate config's deepspeed_config (zero3_init_flag: true,
    offload_param_device: nvme, ...)."""
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv(variable, value)
    with pytest.raises(UserError, match=message):
        deepspeed.accelerator_kwargs(config, "no", HIDDEN)


def test_stage_3_sizes_its_buckets_from_the_model_width(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    zero = deepspeed.accelerator_kwargs(config, "no", HIDDEN)["deepspeed_plugin"].hf_ds_config.config
    zero = zero["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 10 * HIDDEN
    assert zero["reduce_bucket_size"] == HIDDEN * HIDDEN


def test_a_deepspeed_config_file_is_refused(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json")
    with pytest.raises(UserError, match="deepspeed_config_file is not supported"):
        deepspeed.accelerator_kwargs(config, "no", HIDDEN)


def test_the_engine_config_comes_from_the_recipe(config, monkeypatch):
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    config.gradient_accumulation_steps, config.max_grad_norm = 3, 0.0
    kwargs = deepspeed.accelerator_kwargs(config, "bf16", HIDDEN)
    ds_config = kwargs["deepspeed_plugin"].hf_ds_config.config
    assert ds_config["zero_optimization"]["stage"] == 1
    assert ds_config["gradient_accumulation_steps"] == kwargs["gradient_accumulation_plugin"].num_steps == 3
    assert ds_config["train_micro_batch_size_per_gpu"] == config.per_device_train_batch_size
    assert ds_config["gradient_clipping"] == 0.0 and ds_config["bf16"]["enabled"]
    assert kwargs["cpu"] is False


class Reader:
    """Stands in for DeepSpeed's checkpoint engine, whose own load unpickles anything."""

    def load(self, path, map_location=None):
        return torch.load(path, map_location=map_location, weights_only=False)


class Payload:
    """A class no checkpoint needs: unpickling it is what weights_only must refuse."""


def test_resumed_deepspeed_state_is_read_with_weights_only(tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    engine = types.SimpleNamespace(checkpoint_engine=Reader())
    fine, crafted = tmp_path / "fine.pt", tmp_path / "crafted.pt"
    torch.save({"scaler": LossScaler(1.0), "stage": ZeroStageEnum.gradients, "m": torch.ones(2)}, fine)
    torch.save({"x": Payload()}, crafted)
    with deepspeed._safe_loads(engine):
        assert engine.checkpoint_engine.load(str(fine))["stage"] == ZeroStageEnum.gradients
        with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
            engine.checkpoint_engine.load(str(crafted))
    assert isinstance(engine.checkpoint_engine.load(str(crafted))["x"], Payload)  # restored afterwards
