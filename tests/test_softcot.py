"""SoftCoT and SoftCoT++: a frozen main model fed projected soft thoughts from a frozen assistant of another
width and vocabulary; what trains, the contrastive loss, batching, save/load and `latentreason eval`."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from latentreason import cli
from latentreason.errors import UserError
from latentreason.evaluation.soft_thought_solver import prompt_batch
from latentreason.methods import get_method
from latentreason.methods.softcot import diversity_loss
from latentreason.model.latent_lm import LatentLM
from latentreason.model.pretrained import TRAINED, model_kind
from latentreason.model.soft_thoughts import SoftThoughtLM
from latentreason.training.run import run_training
from tests.helpers import TINY_TRAIN_MODEL, chain_problems, tiny_train_config

# The assistant differs from the main model in width (48 vs 32) and in its tokenizer's vocabulary.
ASSISTANT = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
PATHS = 3


def config(name: str, output_dir, **overrides):
    values = dict(
        assistant_tiny_model=ASSISTANT,
        assistant_tokenizer_vocab_size=262,  # the main tokenizer has 267 on chain problems
        num_thought_tokens=3,
        eval_thought_tokens=2,
        per_device_train_batch_size=4,
        max_steps=1,
        **({"num_paths": PATHS} if name == "softcotpp" else {}),
    )
    values.update(overrides)
    return tiny_train_config(get_method(name).config_cls, output_dir, **values)


def build(name: str, tmp_path):
    method = get_method(name)(config(name, tmp_path / "run"))
    lm = method.build_lm(method.config, chain_problems(32))
    method.prepare(lm)
    return method, lm


@pytest.fixture(scope="module")
def softcotpp(tmp_path_factory):
    return build("softcotpp", tmp_path_factory.mktemp("softcotpp"))


def test_the_two_models_differ_in_width_and_vocabulary(softcotpp):
    _, lm = softcotpp
    assert lm.projection.weight.shape == (TINY_TRAIN_MODEL["hidden_size"], ASSISTANT["hidden_size"])
    assert len(lm.assistant_tokenizer) != len(lm.tokenizer)
    assert lm.initial_tokens.shape == (PATHS, ASSISTANT["hidden_size"])


def test_softcotpp_initial_tokens_and_projection_get_gradients_and_the_frozen_models_none(softcotpp):
    method, lm = softcotpp
    lm.train()
    lm.zero_grad(set_to_none=True)
    loss, metrics = method.loss(lm, method.collate(lm, chain_problems(2, seed=1)))
    loss.backward()
    assert metrics["contrastive"] > 0
    for name in ("initial_tokens", "projection.weight", "projection.bias"):
        grad = dict(lm.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert lm.initial_tokens.grad.abs().sum(1).gt(0).all()  # every path's token, not just the first
    assert all(p.grad is None for p in [*lm.model.parameters(), *lm.assistant.parameters()])
    assert not lm.model.training and not lm.assistant.training  # the frozen models stay in eval mode
    lm.zero_grad(set_to_none=True)
    lm.eval()


def test_contrastive_loss_of_a_batch_of_two_is_the_mean_of_the_two_alone():
    generator = torch.Generator().manual_seed(0)
    thoughts = torch.randn(2, 4, 3, 5, generator=generator)
    views = thoughts + 0.3 * torch.randn(thoughts.shape, generator=generator)
    alone = [diversity_loss(thoughts[i : i + 1], views[i : i + 1], 20.0) for i in range(2)]
    assert torch.allclose(diversity_loss(thoughts, views, 20.0), (alone[0] + alone[1]) / 2)
    assert not torch.allclose(alone[0], alone[1])  # the rows are not interchangeable


def test_contrastive_loss_by_hand():
    # Two sets of one 2-d thought each: cosines 1 (own view) and 0 (the other's), scale 2.
    thoughts = torch.tensor([[[[1.0, 0.0]], [[0.0, 3.0]]]])  # [B=1, K=2, N=1, d=2]
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))  # the same for both sets
    assert diversity_loss(thoughts, thoughts, 2.0).item() == pytest.approx(expected)


def prefill_states(lm, method, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected thoughts [R*K, N, d], the main model's last hidden state after its prompt [R*K, d])."""
    prompts = method.prompts(lm, 2)
    batch = prompt_batch(lm, prompts, questions)
    thoughts = lm.thoughts(batch["assistant_ids"], batch["assistant_mask"], 2, PATHS)
    hidden = lm.backbone(
        inputs_embeds=lm.with_thoughts(batch["input_ids"], batch["slot_at"], thoughts),
        attention_mask=batch["attention_mask"].repeat_interleave(PATHS, 0),
        position_ids=batch["position_ids"].repeat_interleave(PATHS, 0),
    ).last_hidden_state[:, -1]
    return thoughts, hidden


@torch.no_grad()
def test_the_soft_thought_prefill_batched_equals_one_row_at_a_time(softcotpp):
    method, lm = softcotpp
    questions = [p.question for p in chain_problems(3, seed=4)]
    questions[1] += " and then some more words to pad"  # rows of different lengths
    thoughts, hidden = prefill_states(lm, method, questions)
    for i, question in enumerate(questions):
        alone_thoughts, alone_hidden = prefill_states(lm, method, [question])
        rows = slice(i * PATHS, (i + 1) * PATHS)
        torch.testing.assert_close(thoughts[rows], alone_thoughts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[rows], alone_hidden, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(thoughts[0], thoughts[1])  # the paths' initial tokens make different thoughts


def test_a_training_step_changes_only_the_projection_and_the_checkpoint_round_trips(tmp_path):
    method, lm = build("softcot", tmp_path)
    frozen = {n: p.detach().clone() for n, p in lm.named_parameters() if not n.startswith("projection.")}
    projection = lm.projection.weight.detach().clone()
    result = run_training("softcot", method.config, progress=False, lm=lm)
    assert result.global_step == 1
    assert not torch.equal(lm.projection.weight, projection)
    assert all(torch.equal(p, frozen[n]) for n, p in lm.named_parameters() if n in frozen)
    assert lm.initial_tokens is None  # SoftCoT: the assistant reads placeholder slots

    final = result.final_dir
    saved = {p.name for p in final.iterdir()}
    assert {"latentreason.json", "soft_thoughts.safetensors", "main", "assistant"} <= saved
    assert "model.safetensors" not in saved  # the frozen models live in their own directories, once
    assert model_kind(str(final)) == TRAINED
    loaded = LatentLM.from_pretrained(final)
    assert isinstance(loaded, SoftThoughtLM) and loaded.meta["method"] == "softcot"
    torch.testing.assert_close(loaded.projection.weight, lm.projection.weight, atol=0, rtol=0)
    problems = chain_problems(2, seed=5)
    lm.eval()
    expected = [s.text for s in method.solver(lm).solve(problems)]
    assert [s.text for s in method.solver(loaded).solve(problems)] == expected


def test_a_checkpoint_whose_frozen_model_changed_is_refused(tmp_path, softcotpp):
    _, lm = softcotpp
    lm.save_pretrained(tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "latentreason.json").read_text())
    meta["soft_thoughts"]["assistant"]["hidden_size"] = 64
    (tmp_path / "model" / "latentreason.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="assistant model .* trained with"):
        LatentLM.from_pretrained(tmp_path / "model")


def test_eval_reports_the_k_paths_as_samples_with_their_majority_vote(tmp_path, softcotpp):
    method, lm = softcotpp
    lm.meta.update(method="softcotpp", method_config={"num_paths": PATHS, "eval_thought_tokens": 2})
    lm.save_pretrained(tmp_path / "model")
    data = tmp_path / "chain.json"
    problems = chain_problems(2, seed=6)
    data.write_text(json.dumps([{"question": p.question, "steps": p.steps, "answer": p.answer} for p in problems]))
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tmp_path / "model"), "--file", str(data), "--output-dir", str(out)]
    assert cli.main([*argv, "--device", "cpu", "--max-new-tokens", "4"]) == 0
    payload = json.loads((out / "results.json").read_text())
    result = payload["results"][0]
    assert result["method"] == "softcotpp" and result["latent_tokens"] == 2
    assert "majority_vote_accuracy" in result and set(result["pass_at_k"]) >= {"1", str(PATHS)}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [len(row["samples"]) for row in rows] == [PATHS, PATHS]


def test_a_softcotpp_run_resumes_from_its_checkpoint(tmp_path):
    first = config("softcotpp", tmp_path / "run", max_steps=2, save_steps=1)
    run_training("softcotpp", first, progress=False)
    resumed = dataclasses.replace(first, max_steps=3, resume_from_checkpoint="auto")
    result = run_training("softcotpp", resumed, progress=False)
    assert result.global_step == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == [1, 2, 3]
    assert isinstance(LatentLM.from_pretrained(result.final_dir), SoftThoughtLM)
