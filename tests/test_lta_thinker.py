"""LTA-Thinker: the two extra loss terms against plain formulas, the prior's thoughts and where they go,
training, the saved model's solver, and config errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from latentreason.errors import ConfigError
from latentreason.evaluation.lta_solver import main_batch, prior_batch, prior_states, with_thoughts
from latentreason.layout import encode_problem
from latentreason.methods.lta_thinker import (
    LTAThinker,
    LTAThinkerConfig,
    reasoning_focus_nce,
    semantic_alignment_kl,
)
from latentreason.methods.saved import load_trained
from latentreason.training.run import run_training
from tests.helpers import build_tiny_lm, chain_problems, tiny_train_config


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_semantic_alignment_kl_is_kl_of_the_question_softmax_to_each_thoughts_softmax():
    gen = torch.Generator().manual_seed(0)
    anchor, thoughts = torch.randn(3, 5, generator=gen), torch.randn(3, 4, 5, generator=gen)
    total = 0.0
    for b in range(3):
        p = [math.exp(x) for x in anchor[b].tolist()]
        p = [x / sum(p) for x in p]
        for k in range(4):
            q = [math.exp(x) for x in thoughts[b, k].tolist()]
            q = [x / sum(q) for x in q]
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert semantic_alignment_kl(anchor, thoughts).item() == pytest.approx(total / 12, rel=1e-5)
    same = anchor[:, None].expand(-1, 4, -1)
    assert semantic_alignment_kl(anchor, same).item() == pytest.approx(0.0, abs=1e-6)


def test_reasoning_focus_nce_picks_the_step_nearest_the_answer_and_divides_by_the_temperature():
    gen = torch.Generator().manual_seed(1)
    anchor, steps, answer = torch.randn(3, 6, generator=gen), torch.randn(3, 4, 6, generator=gen), torch.randn(3, 6)
    step_mask = torch.tensor([[True, True, True, False], [True, True, False, False], [False] * 4])
    temperature = 0.1
    losses = []
    for b in range(3):
        real = [s for s in range(4) if step_mask[b, s]]
        if not real:  # a question without steps has no InfoNCE term
            continue
        positive = max(real, key=lambda s: cosine(steps[b, s].tolist(), answer[b].tolist()))
        logits = [cosine(steps[b, s].tolist(), anchor[b].tolist()) / temperature for s in real]
        log_sum = math.log(sum(math.exp(x) for x in logits))
        losses.append(log_sum - logits[real.index(positive)])
    loss = reasoning_focus_nce(anchor, steps, step_mask, answer, temperature)
    assert loss.item() == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    warmer = reasoning_focus_nce(anchor, steps, step_mask, answer, 1.0)
    assert warmer.item() != pytest.approx(loss.item(), rel=1e-3)
    assert reasoning_focus_nce(anchor, steps, torch.zeros(3, 4, dtype=torch.bool), answer, 0.1).item() == 0.0


def test_prior_writes_k_thoughts_between_bot_and_eot_independent_of_the_steps_and_of_the_batch():
    lm = build_tiny_lm(dtype=torch.float64)
    method = LTAThinker(LTAThinkerConfig(num_thoughts=3))
    method.prepare(lm)
    lm.eval()
    prior = method.prior(lm)
    problems = chain_problems(3, seed=2)
    batch = method.collate(lm, problems)
    states = prior_states(lm, prior, batch, 3)
    assert states.shape == (3, 3 + batch["prior_ids"].shape[1], lm.model.config.hidden_size)
    thoughts = states[:, :3]
    embeds = with_thoughts(lm, batch["input_ids"], thoughts)
    for row, problem in enumerate(problems):
        prompt = encode_problem(lm.tokenizer, problem).prompt
        start = int((batch["attention_mask"][row] == 0).sum()) + len(prompt)  # left padding, then the prompt
        ids = batch["input_ids"][row].tolist()
        assert ids[start] == lm.bot_id and ids[start + 4] == lm.eot_id
        torch.testing.assert_close(embeds[row, start + 1 : start + 4], thoughts[row], atol=0, rtol=0)
        others = [c for c in range(len(ids)) if not start < c < start + 4]
        torch.testing.assert_close(embeds[row, others], lm.embed(batch["input_ids"][row, others]), atol=0, rtol=0)
        # The thoughts of a question alone and without its steps (as at evaluation) are the same.
        alone = prior_batch([prompt], [[]], lm.pad_id, 3)
        torch.testing.assert_close(prior_states(lm, prior, alone, 3)[0, :3], thoughts[row], atol=1e-12, rtol=0)
    # The anchor is the prompt's last token; every step end is that step's last token.
    for row, problem in enumerate(problems):
        enc = encode_problem(lm.tokenizer, problem)
        ids = batch["prior_ids"][row].tolist()
        assert ids[int(batch["anchor_at"][row]) - 3] == enc.prompt[-1]
        ends = batch["step_ends"][row][batch["step_mask"][row]].tolist()
        assert [ids[e - 3] for e in ends] == [enc.cot[end - 1] for _, end in enc.step_spans]


def test_training_lowers_the_loss_and_moves_only_the_prior():
    torch.manual_seed(0)
    lm = build_tiny_lm()
    method = LTAThinker(LTAThinkerConfig(num_thoughts=4, learning_rate=1e-2))
    method.prepare(lm)
    frozen = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    lm.train()
    batch = method.collate(lm, chain_problems(16, seed=1))
    trainable = [p for p in lm.parameters() if p.requires_grad]
    assert trainable and all(p is q for p, q in zip(trainable, method.prior(lm).parameters()))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(25):
        loss, parts = method.loss(lm, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in lm.model.named_parameters())
    assert set(parts) == {"ce", "alignment_kl", "focus", "tokens"}


def test_a_saved_model_answers_through_its_solver_batched_as_one_at_a_time(tmp_path):
    config = tiny_train_config(LTAThinkerConfig, tmp_path / "run", num_thoughts=4, eval_thoughts=2, max_steps=2)
    result = run_training("lta-thinker", config, progress=False)
    # float64: the latent tokens start as copies of '<<', so float32 noise can break their argmax tie with it.
    lm, method = load_trained(str(result.final_dir), None, max_new_tokens=8, dtype=torch.float64)
    assert method.name == "lta-thinker" and method.config.eval_thoughts == 2
    assert "lta_prior" in lm.heads and lm.heads["lta_prior"].num_slots == 4
    solver = method.solver(lm)
    problems = chain_problems(5, seed=9)
    batched = solver.solve(problems)
    assert [s.text for s in batched] == [solver.solve([p])[0].text for p in problems]
    assert all(s.latent_tokens == 2 for s in batched) and any(s.text for s in batched)


def test_main_batch_labels_only_the_reply():
    lm = build_tiny_lm()
    batch = main_batch(lm, [[5, 6], [7]], 2, [[8, 9], [10]])
    assert batch["labels"].tolist() == [[-100] * 6 + [8, 9], [-100] * 7 + [10]]
    assert batch["input_ids"][1, 2:].tolist() == [7, lm.bot_id, lm.latent_id, lm.latent_id, lm.eot_id, 10]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_thoughts": 0}, "num_thoughts"),
        ({"num_thoughts": 2, "eval_thoughts": 3}, "eval_thoughts"),
        ({"focus_weight": -1.0}, "focus_weight"),
        ({"sft_weight": 0.0, "alignment_weight": 0.0, "focus_weight": 0.0}, "not all 0"),
        ({"focus_temperature": 0.0}, "focus_temperature"),
        ({"prior_dropout": 1.0}, "prior_dropout"),
        ({"lora_r": -1}, "lora_r"),
    ],
)
def test_bad_config_values_name_the_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        LTAThinkerConfig(**fields)


def test_prior_heads_must_divide_the_hidden_size():
    with pytest.raises(ConfigError, match="prior_heads.*hidden size 32"):
        LTAThinker(LTAThinkerConfig(prior_heads=3)).prepare(build_tiny_lm())


def test_with_lora_the_adapters_train_and_the_checkpoint_holds_merged_weights(tmp_path):
    pytest.importorskip("peft")
    lm = build_tiny_lm()
    config = tiny_train_config(LTAThinkerConfig, tmp_path / "run", num_thoughts=2, lora_r=4, max_steps=1)
    method = LTAThinker(dataclasses.replace(config, lora_target_modules="q_proj,v_proj"))
    method.prepare(lm)
    trained = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert any(".lora_A." in n for n in trained) and any(n.startswith("heads.lta_prior.") for n in trained)
    assert not any(n.endswith("mlp.up_proj.weight") for n in trained)
    result = run_training("lta-thinker", method.config, progress=False, lm=lm)
    loaded, _ = load_trained(str(result.final_dir), None, max_new_tokens=4)
    assert not any(".lora_" in n for n, _ in loaded.named_parameters())
