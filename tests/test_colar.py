"""CoLaR: compression, the teacher-forced pass, the <eot> stop rule, inference on the latent cache."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from latentreason.data.generators.chain import generate_chain
from latentreason.errors import ConfigError
from latentreason.layout import encode_problem
from latentreason.methods.colar import STD_KEY, CoLaR, CoLaRConfig, compress
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import EXACT, build_tiny_lm, tiny_train_config


def test_compress_matches_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(3, 11, 4, generator=gen)
    lengths, factors = torch.tensor([11, 4, 0]), torch.tensor([3, 5, 2])
    latents, mask = compress(embeds, lengths, factors)
    assert mask.tolist() == [[True] * 4, [True, False, False, False], [False] * 4]
    for row in range(3):
        n, r = int(lengths[row]), int(factors[row])
        for g in range(math.ceil(n / r)):
            window = embeds[row, g * r : min(n, (g + 1) * r)]
            torch.testing.assert_close(latents[row, g], window.sum(0) / math.sqrt(len(window)))


def test_collate_writes_the_factor_and_one_slot_per_window():
    lm = build_tiny_lm("llama")
    method = CoLaR(CoLaRConfig(max_compression=3))
    problems = generate_chain(12, seed=1, num_steps=3)
    batch = method.collate(lm, problems)
    factors = batch["factors"].tolist()
    assert set(factors) <= {1, 2, 3} and len(set(factors)) > 1
    assert factors == method.collate(lm, problems)["factors"].tolist()  # deterministic per (seed, step, question)
    for row, problem in enumerate(problems):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        cot = encode_problem(lm.tokenizer, problem).cot
        assert ids.count(lm.latent_id) == math.ceil(len(cot) / factors[row])
        assert f"(speed {factors[row]})" in lm.tokenizer.decode(ids[: ids.index(lm.bot_id)])
        labels = batch["labels"][row][batch["attention_mask"][row].bool()].tolist()
        slots = [i for i, token in enumerate(ids) if token == lm.latent_id]
        r = factors[row]
        for w, i in enumerate(slots):  # each slot's label is a token of its own window of r
            assert labels[i] in cot[w * r : (w + 1) * r]
        assert labels[slots[-1] + 1] == lm.eot_id  # then the end-of-thinking marker, then the answer
        assert all(label == -100 for label in labels[: slots[0]])


def test_window_token_ce_can_be_turned_off():
    lm = build_tiny_lm("llama")
    problems = generate_chain(4, seed=1, num_steps=3)
    batch = CoLaR(CoLaRConfig(window_token_ce=False)).collate(lm, problems)
    at_slots = batch["labels"][batch["input_ids"] == lm.latent_id]
    assert at_slots.numel() > 0 and bool((at_slots == -100).all())


def test_teacher_forced_pass_is_independent_of_batch_composition():
    lm = build_tiny_lm("llama", dtype=torch.float64)  # equal up to float64 rounding
    method = CoLaR(CoLaRConfig(max_compression=4))
    method.prepare(lm)
    problems = generate_chain(4, seed=2, num_steps=3, min_steps=1)
    with torch.no_grad():
        batch = method.collate(lm, problems)
        hidden, fed, before = method.forward_pass(lm, batch)
        single = method.collate(lm, problems[1:2])
        alone, fed_alone, before_alone = method.forward_pass(lm, single)
    n = int(single["attention_mask"].sum())
    torch.testing.assert_close(hidden[1, -n:], alone[0, -n:], **EXACT)
    first = int((batch["input_ids"][0] == lm.latent_id).sum())  # row 1's latents follow row 0's
    k = fed_alone.shape[0]
    torch.testing.assert_close(fed[first : first + k], fed_alone)
    torch.testing.assert_close(before[first : first + k], before_alone, **EXACT)


def reference_solve(lm, method, prompt: list[int], limit: int, max_new_tokens: int):
    """One row, no cache: think until the LM head's argmax is <eot> (or the limit), then answer greedily."""
    thought = method.thought_map(lm)
    embeds = lm.embed(torch.tensor([prompt]))  # [1, P, d]

    def last_hidden():
        positions = torch.arange(embeds.shape[1])[None]
        return lm.backbone(inputs_embeds=embeds, position_ids=positions).last_hidden_state[:, -1]  # [1, d]

    latents = 0
    while latents < limit and int(lm.lm_head(last_hidden()).argmax(-1)) != lm.eot_id:
        embeds = torch.cat([embeds, thought(last_hidden(), latents)[0][:, None]], dim=1)
        latents += 1
    embeds = torch.cat([embeds, lm.embed(torch.tensor([[lm.eot_id]]))], dim=1)
    answer = []
    for _ in range(max_new_tokens):
        token = int(lm.lm_head(last_hidden()).argmax(-1))
        answer.append(token)
        if token == lm.eos_id:
            break
        embeds = torch.cat([embeds, lm.embed(torch.tensor([[token]]))], dim=1)
    return latents, answer


def test_rows_stop_at_their_own_eot_and_the_answer_continues_on_the_latent_cache():
    torch.manual_seed(0)  # prepare() draws the new tokens' rows: without a seed, the stops hang on earlier tests
    lm = build_tiny_lm("llama")
    method = CoLaR(CoLaRConfig(max_latents=6, max_new_tokens=5, compression_factor=2))
    method.prepare(lm)
    # An output head whose <eot> logit is large along one direction: rows predict <eot> at different steps.
    head = nn.Linear(lm.embed.weight.shape[1], lm.embed.weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(lm.embed.weight)
        head.weight[lm.eot_id] = 40.0 * torch.randn(head.weight.shape[1], generator=torch.Generator().manual_seed(3))
    lm.model.lm_head = head
    problems = generate_chain(8, seed=4, num_steps=3)
    solver = method.solver(lm)
    with torch.no_grad():
        out = solver.rollout(solver.prompts(problems))
        counts = out.num_latents.tolist()
        assert len(set(counts)) > 1 and min(counts) < 6  # rows really stop at different points
        for row, prompt in enumerate(solver.prompts(problems)):
            latents, answer = reference_solve(lm, method, prompt, 6, 5)
            assert counts[row] == latents
            assert out.tokens[row, : out.lengths[row]].tolist() == answer


def test_colar_trains_saves_its_scale_and_answers(tmp_path):
    config = tiny_train_config(
        CoLaRConfig,
        tmp_path / "colar",
        max_compression=3,
        num_eval_examples=4,
        max_latents=8,
        max_steps=6,
        learning_rate=3e-3,
    )
    result = run_training("colar", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "colar" / "log.jsonl").read_text().splitlines()]
    latent_losses = [entry["latent"] for entry in log if "latent" in entry]
    assert latent_losses[-1] < latent_losses[0]  # the head learns to predict the compressed embeddings
    assert result.last_metrics["ce"] > 0
    lm = LatentLM.from_pretrained(result.final_dir)
    assert lm.meta[STD_KEY] > 0 and "latent_head" in lm.heads
    assert 0 <= result.eval.latent_tokens <= 8


def test_config_rejects_unknown_latent_loss():
    with pytest.raises(ConfigError, match="latent_loss"):
        CoLaRConfig(latent_loss="l1")


def test_compress_of_rows_without_steps_is_empty_not_an_error():
    latents, mask = compress(torch.randn(2, 3, 4), torch.tensor([0, 0]), torch.tensor([2, 3]))
    assert latents.shape == (2, 0, 4) and mask.shape == (2, 0)
