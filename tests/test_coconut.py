"""Coconut on the shared engine: curriculum stages, batches, training from a CoT checkpoint."""

from __future__ import annotations

from latentreason.data.generators.chain import generate_chain
from latentreason.methods.coconut import Coconut, CoconutConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_lm, tiny_train_config


def test_stage_schedule_and_optimizer_reset():
    method = Coconut(CoconutConfig(epochs_per_stage=2, max_latent_stage=2, c_thought=2))
    stages, resets = [], []
    for epoch in range(6):
        resets.append(method.start_epoch(epoch))
        stages.append(method.stage)
    assert stages == [0, 0, 1, 1, 2, 2]
    assert resets == [False, False, True, False, True, False]


def test_a_resumed_run_resets_the_optimizer_only_where_the_uninterrupted_run_does():
    def resets(first: int) -> list[int]:
        method = Coconut(CoconutConfig(epochs_per_stage=2, max_latent_stage=2, start_stage=1))  # fresh, as on resume
        return [epoch for epoch in range(first, 8) if method.start_epoch(epoch)]

    whole = resets(0)
    assert whole == [2, 4]  # stages 1 1 2 2 3 3 3 3
    for first in range(1, 8):
        assert resets(first) == [epoch for epoch in whole if epoch >= first], first


def test_collate_replaces_first_steps_with_latents():
    lm = tiny_lm("llama")
    problems = generate_chain(4, seed=0, num_steps=3)
    method = Coconut(CoconutConfig(c_thought=2, max_latent_stage=3, pad_latent_to_max=False))
    method.start_epoch(0)
    method.stage = 2
    batch = method.collate(lm, problems)["latent_batch"]
    assert batch.num_latents.tolist() == [4, 4, 4, 4]
    text = lm.tokenizer.decode(batch.suffix_ids[0][batch.suffix_mask[0].bool()], skip_special_tokens=True)
    assert text.strip() == f"{problems[0].steps[2]}\n### {problems[0].answer}"
    assert (batch.prefix_ids[:, -1] == lm.bot_id).all()
    assert (batch.suffix_ids[:, 0] == lm.eot_id).all()
    method.stage = 3  # beyond the last step: all steps are latent, only the answer remains
    batch = method.collate(lm, problems)["latent_batch"]
    text = lm.tokenizer.decode(batch.suffix_ids[0][batch.suffix_mask[0].bool()], skip_special_tokens=True)
    assert text.strip() == f"### {problems[0].answer}"


def test_uniform_stage_mixing_is_deterministic_per_question():
    method = Coconut(CoconutConfig(max_latent_stage=3, uniform_prob=0.5, seed=3))
    method.start_epoch(4)
    problems = generate_chain(50, seed=1)
    first = [method.stage_for_example(p) for p in problems]
    assert first == [method.stage_for_example(p) for p in problems]
    assert len(set(first)) > 1


def test_coconut_trains_from_a_cot_checkpoint(tmp_path):
    settings = dict(num_train_examples=64, num_eval_examples=8, learning_rate=3e-3, max_new_tokens=16)
    cot = run_training(
        "cot", tiny_train_config(CoconutConfig, tmp_path / "cot", max_steps=2, **settings), progress=False
    )
    config = tiny_train_config(
        CoconutConfig,
        tmp_path / "coconut",
        max_steps=8,
        c_thought=2,
        max_latent_stage=2,
        start_stage=1,
        model_name_or_path=str(cot.final_dir),
        **settings,
    )
    result = run_training("coconut", config, progress=False)
    assert result.global_step == 8
    assert result.eval.latent_tokens == 4.0  # evaluated at the final stage: 2 steps x 2 latents


def test_final_layout_step_and_the_trainers_warning_when_a_run_stops_short_of_it():
    from latentreason.training.trainer import curriculum_warning

    method = Coconut(CoconutConfig(c_thought=1, epochs_per_stage=1, max_latent_stage=6, start_stage=1))
    assert method.final_layout_step(100) == 600  # epochs 0..5 are stages 1..6, epoch 6 the all-latent stage
    assert curriculum_warning(method, 100, 700) is None
    assert "step 1500" in curriculum_warning(method, 250, 700)  # coconut-tasks' rows before the fix
    assert Coconut(CoconutConfig(curriculum=False)).final_layout_step(100) == 0
