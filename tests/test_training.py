"""The shared SFT loop: it learns, checkpoints atomically, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

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


@pytest.fixture
def optimizer_steps():
    """What each optimizer step of the test starts from, per parameter (in the optimizer's order): its
    gradient and its AdamW first moment (None before the parameter's first step)."""
    seen = []

    def record(optimizer, args, kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        state = optimizer.state
        seen.append(
            {
                "grads": [p.grad.detach().clone() for p in params],
                "exp_avg": [state[p]["exp_avg"].clone() if "exp_avg" in state.get(p, {}) else None for p in params],
            }
        )

    handle = register_optimizer_step_pre_hook(record)
    yield seen
    handle.remove()


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


def test_gradient_accumulation_matches_large_batch(tmp_path, optimizer_steps):
    # The gradients themselves, not the weights: AdamW's update hardly changes when every gradient is scaled,
    # so it would not show a missing or extra division by the number of micro-batches. No clipping either:
    # it would rescale both runs' gradients to the same norm.
    def gradients(name: str, **batching) -> list[list[torch.Tensor]]:
        optimizer_steps.clear()
        cfg = config(tmp_path / name, max_steps=2, max_grad_norm=0.0, num_eval_examples=0, **batching)
        run_training("cot", cfg, progress=False)
        return [step["grads"] for step in optimizer_steps]

    big = gradients("big", per_device_train_batch_size=16)
    acc = gradients("acc", per_device_train_batch_size=8, gradient_accumulation_steps=2)
    assert len(big) == len(acc) == 2
    # Same 16 problems per step, and every 2-step chain has as many target tokens, so the mean of the two
    # micro-batch means is the 16-row mean: only float rounding differs (about 1e-6).
    for step, (got, expected) in enumerate(zip(acc, big)):
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            relative = float((g - e).norm() / e.norm())
            assert relative <= 1e-5, f"step {step + 1}, parameter {i}: gradients differ by {relative:.3g} (relative)"


@pytest.mark.parametrize("resets", [True, False])
def test_a_method_can_ask_for_a_fresh_optimizer_on_resume(tmp_path, capsys, monkeypatch, optimizer_steps, resets):
    # CODI/PCCoT with LoRA: resumed runs train new adapters, so old Adam moments must not be reused.
    monkeypatch.setattr(get_method("cot"), "resume_resets_optimizer", lambda self: resets)
    run_training("cot", config(tmp_path, max_steps=2, num_eval_examples=0), progress=False)
    optimizer_steps.clear()
    capsys.readouterr()
    cfg = config(tmp_path, max_steps=3, num_eval_examples=0, resume_from_checkpoint="auto")
    run_training("cot", cfg, progress=False)
    (resumed,) = optimizer_steps  # the one step after the checkpoint, as it starts
    with_moments = [i for i, moment in enumerate(resumed["exp_avg"]) if moment is not None and moment.any()]
    # Reset: no parameter has a moment yet; else every one has the one loaded from the checkpoint.
    assert with_moments == ([] if resets else list(range(len(resumed["exp_avg"]))))
    assert ("the optimizer state starts anew" in capsys.readouterr().out) == resets


def test_a_method_can_ask_for_a_fresh_optimizer_at_an_epoch_or_a_step(tmp_path, monkeypatch, optimizer_steps):
    # Coconut's stages (start_epoch) and iCoT's removals (start_step) ask for it: the loop must act on it.
    cot = get_method("cot")
    monkeypatch.setattr(cot, "start_epoch", lambda self, epoch: epoch == 1)
    monkeypatch.setattr(cot, "start_step", lambda self, step, steps_per_epoch: step == 2)

    def fresh_steps(max_steps: int, **resume) -> list[int]:
        """Indices (from 0, this run's steps) of the optimizer steps that start without AdamW moments."""
        optimizer_steps.clear()
        cfg = config(tmp_path, num_train_examples=64, max_steps=max_steps, num_eval_examples=0, **resume)
        run_training("cot", cfg, progress=False)
        return [i for i, step in enumerate(optimizer_steps) if all(m is None for m in step["exp_avg"])]

    # 4 steps per epoch: the first step, the one start_step asks at and the first of epoch 1.
    assert fresh_steps(5) == [0, 2, 4]
    # Resumed inside epoch 1, the method is told the epoch again, but the epoch does not start here.
    assert fresh_steps(6, resume_from_checkpoint="auto") == []


def test_codi_with_lora_resets_the_optimizer_on_resume():
    codi = get_method("codi")
    assert codi(codi.config_cls(lora_r=4)).resume_resets_optimizer()
    assert not codi(codi.config_cls()).resume_resets_optimizer()
