"""Pause tokens and Coconut's ablation switches (no curriculum, pause as thought)."""

from __future__ import annotations

import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.engine.latent_pass import latent_forward
from latentreason.engine.loss import next_token_loss
from latentreason.methods.coconut import Coconut, CoconutConfig
from latentreason.methods.pause import PauseConfig, PauseTokens
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import EXACT, build_tiny_lm, tiny_lm, tiny_train_config


def test_without_curriculum_every_epoch_is_the_final_stage():
    for cls, config in ((Coconut, CoconutConfig), (PauseTokens, PauseConfig)):
        method = cls(config(max_latent_stage=2, epochs_per_stage=1, curriculum=False))
        resets = [method.start_epoch(epoch) for epoch in range(4)]
        assert method.stage == 3 and resets == [False] * 4
    assert PauseConfig().curriculum is False and CoconutConfig().curriculum is True


def test_one_call_pause_pass_equals_the_latent_engine_with_a_constant_thought():
    """Rows with different pause counts and lengths: the single teacher-forced call gives, row by row,
    the hidden states the sequential latent pass gives when every thought is the pause embedding (float64: equal
    up to rounding)."""
    lm = build_tiny_lm("llama", dtype=torch.float64)
    problems = generate_chain(5, seed=4, num_steps=3, min_steps=1)
    method = PauseTokens(PauseConfig(c_thought=2, max_latent_stage=3, pad_latent_to_max=False))
    method.start_epoch(0)
    batch = method.collate(lm, problems)
    reference = Coconut.collate(method, lm, problems)["latent_batch"]
    assert len(set(reference.num_latents.tolist())) > 1  # the rows really differ in pauses
    with torch.no_grad():
        loss, _ = method.loss(lm, batch)
        hidden = lm.backbone(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).last_hidden_state  # [B, L, d]
        out = latent_forward(lm, reference, method.thought_map(lm))
        engine_loss, _ = next_token_loss(lm, out.suffix_hidden, reference.suffix_labels)
    torch.testing.assert_close(loss, engine_loss, **EXACT)
    for row, length in enumerate(reference.suffix_mask.sum(1).tolist()):
        torch.testing.assert_close(hidden[row, -length:], out.suffix_hidden[row, :length], **EXACT)


def test_pause_as_thought_keeps_coconut_layout_at_each_stage():
    lm = tiny_lm("llama")
    problems = generate_chain(3, seed=1, num_steps=3)
    method = PauseTokens(PauseConfig(c_thought=2, max_latent_stage=3, curriculum=True, start_stage=1))
    method.start_epoch(0)  # stage 1: the first step becomes two pauses
    ids = method.collate(lm, problems)["input_ids"][0].tolist()
    text = lm.tokenizer.decode(ids[ids.index(lm.eot_id) + 1 :], skip_special_tokens=True)
    assert ids.count(lm.latent_id) == 2 and ids.count(lm.bot_id) == 1
    assert text.strip() == f"{' '.join(problems[0].steps[1:])}\n### {problems[0].answer}"


def test_pause_trains_its_embedding_and_answers_with_fixed_pauses(tmp_path):
    config = tiny_train_config(
        PauseConfig, tmp_path / "pause", c_thought=2, max_latent_stage=2, num_eval_examples=4, learning_rate=1e-2
    )
    result = run_training("pause", config, progress=False)
    trained = LatentLM.from_pretrained(result.final_dir)
    # The pause row moved away from the '<<' row it was initialised from: the pauses are learned.
    assert not torch.allclose(trained.embed.weight[trained.latent_id], trained.embed.weight[trained.bot_id])
    assert result.eval.latent_tokens == 4.0  # max_latent_stage * c_thought for every problem
