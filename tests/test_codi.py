"""CODI: teacher/student layouts, the distillation positions and loss, padding invariance, training, LoRA."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentreason.data.generators.chain import generate_chain
from latentreason.data.problems import Problem
from latentreason.methods.codi import CODI, CODIConfig, distillation_loss
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import EXACT, build_tiny_lm, tiny_lm, tiny_train_config


def test_distillation_loss_equals_a_plain_loop_and_leaves_the_teacher_alone():
    gen = torch.Generator().manual_seed(0)
    student = [torch.randn(3, 5, 8, generator=gen, requires_grad=True) for _ in range(4)]
    teacher = [torch.randn(3, 7, 8, generator=gen, requires_grad=True) for _ in range(4)]
    s_at, t_at = torch.tensor([0, 4, 2]), torch.tensor([6, 1, 3])
    expected = []
    for s, t in zip(student, teacher):
        target = torch.stack([t[row, int(t_at[row])] for row in range(3)]).detach()  # [B, d]
        picked = torch.stack([s[row, int(s_at[row])] for row in range(3)])
        expected.append(F.smooth_l1_loss(picked, target) / target.std())
    loss = distillation_loss(student, s_at, teacher, t_at)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    loss.backward()
    assert all(t.grad is None for t in teacher) and all(s.grad.abs().sum() > 0 for s in student)
    plain = distillation_loss(student, s_at, teacher, t_at, divide_std=False)
    assert not torch.allclose(plain, loss)


def test_teacher_drops_the_last_step_and_both_positions_precede_the_answer_value():
    lm = tiny_lm("llama")
    problems = [Problem("7 + 5 - 3", ["<<7+5=2>>", "<<2-3=9>>"], "9"), Problem("4 * 2", ["<<4*2=8>>"], "8")]
    method = CODI(CODIConfig(num_latents=3))
    batch = method.collate(lm, problems)["latent_batch"]
    extras = batch.extras
    teacher_text = lm.tokenizer.decode(extras["teacher_ids"][0][extras["teacher_mask"][0].bool()])
    assert "<<7+5=2>>" in teacher_text and "<<2-3=9>>" not in teacher_text
    assert "<<" not in lm.tokenizer.decode(extras["teacher_ids"][1][extras["teacher_mask"][1].bool()])
    for row, problem in enumerate(problems):
        s_at, t_at = int(extras["student_at"][row]), int(extras["teacher_at"][row])
        # The same token at both positions, and the next one is the answer's first value token.
        assert batch.suffix_ids[row, s_at] == extras["teacher_ids"][row, t_at]
        assert batch.suffix_ids[row, s_at + 1] == extras["teacher_ids"][row, t_at + 1]
        assert lm.tokenizer.decode([int(batch.suffix_ids[row, s_at + 1])]).strip() == problem.answer[0]
    assert batch.num_latents.tolist() == [3, 3]
    keep = CODI(CODIConfig(teacher_drop_last_step=False)).collate(lm, problems[:1])["latent_batch"].extras
    assert "<<2-3=9>>" in lm.tokenizer.decode(keep["teacher_ids"][0])


def test_student_and_teacher_are_independent_of_batch_composition():
    """A short question alone and batched with a long one: same latents, same distillation states (float64:
    equal up to rounding)."""
    lm = build_tiny_lm("llama", dtype=torch.float64)
    method = CODI(CODIConfig(num_latents=3))
    method.prepare(lm)
    lm.eval()
    problems = [generate_chain(1, seed=3, num_steps=1)[0], generate_chain(1, seed=4, num_steps=4)[0]]

    def states(batch_problems):
        batch = method.collate(lm, batch_problems)["latent_batch"]
        extras = batch.extras
        with torch.no_grad():
            student = method.student_pass(lm, batch)
            teacher = lm.backbone(
                input_ids=extras["teacher_ids"],
                attention_mask=extras["teacher_mask"],
                position_ids=extras["teacher_positions"],
            ).last_hidden_state
        rows = torch.arange(len(batch_problems))
        at_student, at_teacher = extras["student_at"], extras["teacher_at"]
        return student.latent_inputs, student.suffix_hidden[rows, at_student], teacher[rows, at_teacher]

    together, alone = states(problems), states(problems[:1])
    for got, want in zip(together, alone):
        torch.testing.assert_close(got[0], want[0], **EXACT)


def test_codi_trains_and_reloads_its_projector(tmp_path):
    config = tiny_train_config(
        CODIConfig, tmp_path / "codi", num_latents=2, max_steps=6, learning_rate=3e-3, num_eval_examples=4
    )
    result = run_training("codi", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "codi" / "log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses[-1] < losses[0]
    assert all(entry["distill"] > 0 and entry["teacher_ce"] > 0 for entry in log if "distill" in entry)
    lm = LatentLM.from_pretrained(result.final_dir).eval()
    layers = [type(m) for m in lm.heads["projector"].net]
    assert layers == [nn.Dropout, nn.Linear, nn.GELU, nn.Linear, nn.LayerNorm]
    problems = generate_chain(4, seed=5, num_steps=2)
    first = CODI(config).solver(lm).solve(problems)
    again = CODI(config).solver(LatentLM.from_pretrained(result.final_dir).eval()).solve(problems)
    assert [s.text for s in first] == [s.text for s in again]
    assert all(s.latent_tokens == 2 for s in first)


def test_lora_trains_adapters_only_and_saves_a_merged_plain_model(tmp_path):
    pytest.importorskip("peft")
    lm = build_tiny_lm("llama")
    method = CODI(CODIConfig(num_latents=2, lora_r=4, lora_alpha=8, lora_dropout=0.0))
    method.prepare(lm)
    method.prepare(lm)  # idempotent: adapters are injected once
    trainable = {name for name, p in lm.named_parameters() if p.requires_grad}
    adapters = {name for name in trainable if ".lora_" in name or ".trainable_tokens_delta." in name}
    assert trainable and all(name in adapters or name.startswith("heads.") for name in trainable)
    assert sum(".lora_A." in name for name in trainable) == 2 * 7  # 2 layers x q,k,v,o,gate,up,down
    special = [lm.bot_id, lm.latent_id, lm.eot_id]
    rows = [p for name, p in lm.named_parameters() if ".trainable_tokens_delta." in name]
    assert rows and all(p.shape == (3, lm.embed.weight.shape[1]) for p in rows)  # the special tokens' rows
    with torch.no_grad():  # make the adapters do something (B starts at zero; the rows start as '<<')
        for name, p in lm.named_parameters():
            if ".lora_B." in name or ".trainable_tokens_delta." in name:
                p.normal_(0, 0.5)
    lm.eval()
    ids = torch.tensor([[5, 6, *special, 9]])
    with torch.no_grad():
        adapted = lm.backbone(input_ids=ids).last_hidden_state
        adapted_logits = lm.lm_head(adapted)
    lm.save_pretrained(tmp_path / "m")
    reloaded = LatentLM.from_pretrained(tmp_path / "m").eval()
    assert not any(".lora_" in name for name, _ in reloaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded.backbone(input_ids=ids).last_hidden_state, adapted, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(reloaded.lm_head(adapted), adapted_logits, atol=1e-5, rtol=1e-4)
    bot, latent, eot = (reloaded.embed.weight[i] for i in special)  # trained apart, saved in place
    assert not torch.equal(bot, eot) and not torch.equal(bot, latent)
