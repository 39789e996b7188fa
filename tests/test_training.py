"""The shared SFT loop: it learns, checkpoints atomically, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentreason.errors import UserError
from latentreason.methods import get_method
from latentreason.train_config import SFTConfig
from latentreason.training.checkpoint import list_checkpoints
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config


def config(tmp_path, **overrides) -> SFTConfig:
    values = dict(
        num_train_examples=128, num_eval_examples=16, learning_rate=3e-3, max_steps=6, max_new_tokens=24, seed=1
    )
    return tiny_train_config(SFTConfig, tmp_path / "run", **{**values, **overrides})


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("method", ["cot", "no-cot"])
def test_training_reduces_loss_and_changes_parameters(tmp_path, method):
    cfg = config(tmp_path, max_steps=12, learning_rate=1e-2, lr_scheduler_type="constant")
    result = run_training(method, cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert (result.final_dir / "model.safetensors").is_file()
    assert json.loads((result.final_dir / "latentreason.json").read_text())["method"] == method
    assert result.eval is not None and result.eval.n > 0
    first = list_checkpoints(tmp_path / "run")[-1]
    assert first.name == "checkpoint-12"


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch):
    straight = run_training("cot", config(tmp_path / "a", save_steps=2), progress=False)
    expected = weights(straight.final_dir)

    method_cls = get_method("cot")
    original = method_cls.loss
    calls = {"n": 0}

    def crash_on_fifth_step(self, lm, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return original(self, lm, batch)

    monkeypatch.setattr(method_cls, "loss", crash_on_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        run_training("cot", config(tmp_path / "b", save_steps=2), progress=False)
    monkeypatch.setattr(method_cls, "loss", original)
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "run")] == ["checkpoint-2", "checkpoint-4"]

    resumed = run_training("cot", config(tmp_path / "b", save_steps=2, resume_from_checkpoint="auto"), progress=False)
    got = weights(resumed.final_dir)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_half_written_checkpoint_is_ignored(tmp_path):
    run_training("cot", config(tmp_path, max_steps=2), progress=False)
    broken = tmp_path / "run" / "checkpoint-9"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"partial")
    assert list_checkpoints(tmp_path / "run")[-1].name == "checkpoint-2"


def test_existing_output_dir_is_not_overwritten(tmp_path):
    run_training("cot", config(tmp_path, max_steps=1), progress=False)
    with pytest.raises(UserError, match="not empty"):
        run_training("cot", config(tmp_path, max_steps=1), progress=False)


def test_gradient_accumulation_matches_large_batch(tmp_path):
    big = run_training("cot", config(tmp_path / "big", max_steps=2, per_device_train_batch_size=16), progress=False)
    acc = run_training(
        "cot",
        config(tmp_path / "acc", max_steps=2, per_device_train_batch_size=8, gradient_accumulation_steps=2),
        progress=False,
    )
    a, b = weights(big.final_dir), weights(acc.final_dir)
    # Same 16 problems per step; per-micro-batch token means differ slightly from one 16-row mean.
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-4), name


def test_a_method_can_ask_for_a_fresh_optimizer_on_resume(tmp_path, capsys, monkeypatch):
    # CODI/PCCoT with LoRA: resumed runs train new adapters, so old Adam moments must not be reused.
    method_cls = get_method("cot")
    monkeypatch.setattr(method_cls, "resume_resets_optimizer", lambda self: True)
    run_training("cot", config(tmp_path, max_steps=2, num_eval_examples=0), progress=False)
    capsys.readouterr()
    run_training(
        "cot", config(tmp_path, max_steps=3, num_eval_examples=0, resume_from_checkpoint="auto"), progress=False
    )
    assert "the optimizer state starts anew" in capsys.readouterr().out


def test_codi_with_lora_resets_the_optimizer_on_resume():
    codi = get_method("codi")
    assert codi(codi.config_cls(lora_r=4)).resume_resets_optimizer()
    assert not codi(codi.config_cls()).resume_resets_optimizer()
