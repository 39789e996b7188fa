"""Coconut on the shared engine: curriculum stages, batches, training from a CoT checkpoint."""

from __future__ import annotations

from latentreason.data.generators.chain import generate_chain
from latentreason.methods.coconut import Coconut, CoconutConfig
from latentreason.training.run import run_training
from tests.helpers import tiny_lm

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def test_stage_schedule_and_optimizer_reset():
    method = Coconut(CoconutConfig(epochs_per_stage=2, max_latent_stage=2, c_thought=2))
    stages, resets = [], []
    for epoch in range(6):
        resets.append(method.start_epoch(epoch))
        stages.append(method.stage)
    assert stages == [0, 0, 1, 1, 2, 2]
    assert resets == [False, False, True, False, True, False]


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
    common = dict(
        model_name_or_path="tiny",
        tiny_model=TINY,
        dataset="synthetic:chain",
        dataset_params={"num_steps": 2},
        num_train_examples=64,
        num_eval_examples=8,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        max_new_tokens=16,
        logging_steps=1,
    )
    cot = run_training("cot", CoconutConfig(output_dir=str(tmp_path / "cot"), max_steps=2, **common), progress=False)
    config = CoconutConfig(
        output_dir=str(tmp_path / "coconut"),
        max_steps=8,
        c_thought=2,
        max_latent_stage=2,
        start_stage=1,
        **{**common, "model_name_or_path": str(cot.final_dir)},
    )
    result = run_training("coconut", config, progress=False)
    assert result.global_step == 8
    assert result.eval.latent_tokens == 4.0  # evaluated at the final stage: 2 steps x 2 latents
