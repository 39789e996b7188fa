"""Numerical guards: a NaN/inf loss or gradient skips the update; too many in a row stop the run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from latentreason import cli
from latentreason.errors import UserError
from latentreason.methods import get_method
from latentreason.train_config import SFTConfig
from latentreason.training.checkpoint import list_checkpoints
from latentreason.training.guards import NonFiniteGuard
from latentreason.training.run import run_training
from tests.helpers import tiny_train_config


def test_guard_passes_finite_values_and_counts_skips():
    said = []
    guard = NonFiniteGuard(3, report=said.append)
    assert guard.check(torch.tensor(2.0), torch.tensor(1.0))
    assert not guard.check(torch.tensor(math.nan), torch.tensor(1.0), step=7)
    assert not guard.check(1.0, math.inf)
    assert (guard.skipped, guard.in_a_row) == (2, 2)
    assert guard.check(1.0, 0.5)  # a finite step ends the streak, the total stays
    assert (guard.skipped, guard.in_a_row) == (2, 0)
    assert said[0].startswith("step 7: non-finite loss nan") and "skipped (1 in a row)" in said[0]


def test_guard_raises_after_max_in_a_row():
    guard = NonFiniteGuard(2, skipped=5, report=lambda _: None)
    assert not guard.check(-math.inf)
    with pytest.raises(UserError, match="2 steps in a row.*max_nonfinite_steps=2"):
        guard.check(math.nan, step=9)
    assert guard.skipped == 7


def test_guard_without_a_gradient_norm_checks_the_loss_only():
    guard = NonFiniteGuard(1, report=lambda _: None)
    assert guard.check(0.3)
    with pytest.raises(UserError):
        guard.check(math.nan)


class InfGradient(torch.autograd.Function):
    """Identity forward (a finite loss), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def poison(monkeypatch, bad_calls: set[int], kind: str) -> None:
    """Make the cot loss NaN (kind 'loss') or its gradient infinite (kind 'grad') on the given calls (1-based)."""
    method_cls = get_method("cot")
    original = method_cls.loss
    calls = {"n": 0}

    def loss(self, lm, batch):
        calls["n"] += 1
        value, metrics = original(self, lm, batch)
        if calls["n"] in bad_calls:
            value = value * math.nan if kind == "loss" else InfGradient.apply(value)
        return value, metrics

    monkeypatch.setattr(method_cls, "loss", loss)


def config(tmp_path, **overrides) -> SFTConfig:
    values = dict(num_train_examples=64, max_steps=5, save_steps=1, save_total_limit=0, learning_rate=1e-2, seed=3)
    return tiny_train_config(SFTConfig, tmp_path / "run", **{**values, **overrides})


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def log_rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_leaves_parameters_and_optimizer_alone(tmp_path, monkeypatch, kind):
    poison(monkeypatch, {3}, kind)
    result = run_training("cot", config(tmp_path), progress=False)
    assert result.global_step == 5  # the run goes on
    run = tmp_path / "run"
    before, after = weights(run / "checkpoint-2"), weights(run / "checkpoint-3")
    assert all(torch.equal(before[name], after[name]) for name in before)
    optimizer = [torch.load(run / f"checkpoint-{s}" / "optimizer.pt", weights_only=True) for s in (2, 3)]
    assert optimizer[0]["state"][0]["step"] == optimizer[1]["state"][0]["step"] == 2
    later = weights(run / "checkpoint-4")
    assert not all(torch.equal(after[name], later[name]) for name in after)  # step 4 trains again
    assert all(torch.isfinite(t).all() for t in weights(result.final_dir).values())
    rows = log_rows(tmp_path)
    assert [row["skipped_nonfinite"] for row in rows] == [0, 0, 1, 1, 1]
    assert "loss" not in rows[2] and all(math.isfinite(row["loss"]) for row in rows if "loss" in row)
    # The schedule advanced through the skipped step: the learning rate follows the step count.
    assert json.loads((run / "checkpoint-5" / "trainer_state.json").read_text())["skipped_nonfinite"] == 1


def test_too_many_nonfinite_steps_stop_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison(monkeypatch, {3, 4, 5, 6, 7, 8}, "loss")
    with pytest.raises(UserError, match=r"step 5: .*3 steps in a row \(max_nonfinite_steps=3\)"):
        run_training("cot", config(tmp_path, max_steps=8, max_nonfinite_steps=3), progress=False)
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    good = weights(run / "checkpoint-2")
    assert all(torch.equal(good[name], weights(run / "checkpoint-4")[name]) for name in good)
    assert all(torch.isfinite(t).all() for t in good.values())
    assert not (run / "final").exists() and not list(run.glob(".tmp-*"))


def test_cli_stops_a_diverging_run_with_one_line(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, set(range(1, 10)), "loss")
    argv = ["train", "--method", "cot", "--tiny_model", "{hidden_size: 32, num_hidden_layers: 2}"]
    argv += ["--num_train_examples", "32", "--num_eval_examples", "0", "--per_device_train_batch_size", "16"]
    argv += ["--max_steps", "4", "--max-nonfinite-steps", "2", "--output_dir", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    # The progress bar also writes to stderr; the error is the one line after it, with no traceback.
    last = err.strip().splitlines()[-1]
    assert last.startswith("latentreason: error: step 2: ") and "max_nonfinite_steps=2" in last
    assert "Traceback" not in err and err.count("latentreason: error:") == 1
