"""iCoT: the removal schedule, the smoothing offset, and training on the shared loop."""

from __future__ import annotations

import pytest

from latentreason.data.generators.chain import generate_chain
from latentreason.engine.batch import IGNORE
from latentreason.errors import ConfigError
from latentreason.methods.icot import ICoT, ICoTConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_lm, tiny_train_config


def test_schedule_grows_by_one_every_steps_per_epoch_over_remove_per_epoch():
    method = ICoT(ICoTConfig(remove_per_epoch=4, reset_optimizer=True))
    resets = [method.start_step(step, steps_per_epoch=8) for step in range(17)]
    assert method.scheduled == 8
    assert [i for i, r in enumerate(resets) if r] == [2, 4, 6, 8, 10, 12, 14, 16]


def test_a_resumed_run_resets_the_optimizer_only_where_the_uninterrupted_run_does():
    def resets(first: int) -> list[int]:
        method = ICoT(ICoTConfig(remove_per_epoch=4, reset_optimizer=True))  # a fresh method, as after a resume
        return [step for step in range(first, 17) if method.start_step(step, steps_per_epoch=8)]

    whole = resets(0)
    for first in range(1, 17):
        assert resets(first) == [step for step in whole if step >= first], first


def test_no_optimizer_reset_once_the_whole_cot_is_gone():
    # As the reference (train.py: no reset when the previous batch had its whole CoT removed): the count
    # reaches the threshold 3 at step 6 (reset: step 5 still kept CoT tokens), then grows without resets.
    method = ICoT(ICoTConfig(remove_per_epoch=4, remove_all_when_remove_beyond=3, reset_optimizer=True))
    assert [step for step in range(17) if method.start_step(step, steps_per_epoch=8)] == [2, 4, 6]


def test_remove_all_threshold_zero_never_cuts_the_cot_short():
    method = ICoT(ICoTConfig(remove_all_when_remove_beyond=0, removal_smoothing_lambda=0.0))
    problem = generate_chain(1, seed=0)[0]
    method.scheduled = 7
    assert method.removed_tokens(problem, 25) == 7  # with any threshold <= 7 this would be 25
    method.scheduled = 40
    assert method.removed_tokens(problem, 25) == 25
    resets = [method.start_step(step, steps_per_epoch=1) for step in range(1, 60)]
    assert all(resets)  # reset_optimizer (default) at every increment: no threshold ends them
    with pytest.raises(ConfigError, match="remove_all_when_remove_beyond >= 0"):
        ICoTConfig(remove_all_when_remove_beyond=-1)


def test_removal_without_smoothing_is_exact_and_whole_cot_goes_past_the_threshold():
    lm = tiny_lm("llama")
    problems = generate_chain(6, seed=0, num_steps=3)
    method = ICoT(ICoTConfig(removal_smoothing_lambda=0.0, remove_all_when_remove_beyond=20))
    method.scheduled = 5
    batch = method.collate(lm, problems)
    full = ICoT(ICoTConfig(removal_smoothing_lambda=0.0))
    full_batch = full.collate(lm, problems)
    labelled = (batch["labels"] != IGNORE).sum(1)
    assert ((full_batch["labels"] != IGNORE).sum(1) - labelled).tolist() == [5] * 6
    method.scheduled = 20
    answers_only = method.collate(lm, problems)["labels"]
    text = lm.tokenizer.decode([t for t in answers_only[0].tolist() if t != IGNORE], skip_special_tokens=True)
    assert text == f"### {problems[0].answer}"


def test_smoothing_offsets_are_mostly_small_and_deterministic():
    method = ICoT(ICoTConfig(removal_smoothing_lambda=4.0))
    method.scheduled = 3
    problems = generate_chain(400, seed=2)
    removed = [method.removed_tokens(p, 25) for p in problems]
    assert removed == [method.removed_tokens(p, 25) for p in problems]
    assert min(removed) == 3 and max(removed) <= 25
    assert 0.9 < sum(r == 3 for r in removed) / len(removed) < 1.0  # P(offset 0) = 1 - exp(-4) ~ 0.98


def test_icot_trains(tmp_path):
    config = tiny_train_config(
        ICoTConfig,
        tmp_path / "run",
        num_train_examples=64,
        num_eval_examples=8,
        max_steps=8,
        remove_per_epoch=40,
        max_new_tokens=16,
    )
    result = run_training("icot", config, progress=False)
    assert result.global_step == 8 and (result.final_dir / "model.safetensors").is_file()


def test_final_layout_step_is_the_first_step_without_any_cot():
    for remove_per_epoch, steps_per_epoch, beyond in [(8, 100, 22), (3, 7, 5), (8, 139, 39), (0.7, 10, 2)]:
        method = ICoT(ICoTConfig(remove_per_epoch=remove_per_epoch, remove_all_when_remove_beyond=beyond))
        gone = [s for s in range(2000) if method.removes_all(method.scheduled_at(s, steps_per_epoch))]
        assert method.final_layout_step(steps_per_epoch) == gone[0]
    assert ICoT(ICoTConfig(remove_all_when_remove_beyond=0)).final_layout_step(100) is None
