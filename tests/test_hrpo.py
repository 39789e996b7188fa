"""HRPO (hybrid latent reasoning by GRPO): the gates and h^ against hand-written formulas, sampled log-probs equal
their one-call recomputation (after a chat or a layout prompt), closed gates are ordinary token sampling, the gates
and Lambda learn at their own rates, draws do not depend on the batch, a run saves gates that `eval` then reads its
thoughts through, thinking ends at the prompt's own answer marker unless told otherwise, and bad settings are
refused. Models are float64, so "equal" is `EXACT`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latentreason import cli
from latentreason.config import load_config
from latentreason.data.formats import load_file
from latentreason.decoding import decoder_from_args
from latentreason.decoding.hybrid import default_decoder
from latentreason.engine.mixture import normalized_mixture
from latentreason.engine.steps import EMBED, TOKEN
from latentreason.errors import ConfigError, UserError
from latentreason.evaluation.chat_solver import ChatSolver
from latentreason.evaluation.prompting import BOXED_TEMPLATE, PromptBuilder
from latentreason.model.hybrid_gates import DECAY, GATES_HEAD, HybridGates
from latentreason.model.latent_lm import LatentLM
from latentreason.model.pretrained import PRETRAINED, load_pretrained, model_kind
from latentreason.rl.config import RLConfig
from latentreason.rl.hybrid_policy import HybridPolicy, attach_gates
from latentreason.rl.run import run_rl
from latentreason.rl.trainer import RLTrainer
from tests.helpers import EXACT, chain_problems, save_tiny_chat_model
from tests.test_token_policy import (
    PROMPTS,
    chat_run_overrides,
    model_and_prompt,
    plain_sampling,
    sampled_alone_and_together,
)

CLOSED = 1e4  # a Lambda whose softplus(-Lambda) is 0 in float64: a = 1 exactly


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")


def hybrid_config(**fields) -> RLConfig:
    settings = {"think_inputs": "hybrid", "temperature": 1.3, "max_completion_length": 16, "soft_top_k": 8}
    return load_config(RLConfig, None, {**settings, **fields})


def hybrid_policy(chat_dir, lambda_value: float | None = 0.0, prompt: str = "chat", **fields) -> HybridPolicy:
    """A policy of the tiny chat model (or of a model as trained here, after its layout prompt); Lambda set to
    `lambda_value` everywhere (0: wide open, a ~ 0.06)."""
    lm, builder = model_and_prompt(chat_dir, prompt)
    policy = HybridPolicy(lm, builder, hybrid_config(**fields))
    if lambda_value is not None:
        with torch.no_grad():
            policy.gates.Lambda.fill_(lambda_value)
    return policy


def prompts(policy, n=6):
    return policy.prompts(chain_problems(n, seed=5))


def test_the_gates_follow_the_formula_and_start_almost_closed():
    torch.manual_seed(0)
    d = 3
    gates = HybridGates(d, top_k=4, temperature=0.5, answer_marker="####").double()
    gates.reset(0.99, 0.999, torch.Generator().manual_seed(1))
    at_r_one = torch.exp(-DECAY * torch.log1p(torch.exp(-gates.Lambda.detach())))  # a where r = 1
    assert ((at_r_one >= 0.99 - 1e-12) & (at_r_one <= 0.999 + 1e-12)).all()
    with torch.no_grad():
        gates.Lambda.copy_(torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64))
    e, h = torch.randn(2, d, dtype=torch.float64), torch.randn(2, d, dtype=torch.float64)
    fed, a = (x.detach() for x in gates(e, h))
    w_r, b_r = gates.gate_r.weight.detach().tolist(), gates.gate_r.bias.detach().tolist()
    w_i, b_i = gates.gate_i.weight.detach().tolist(), gates.gate_i.bias.detach().tolist()
    lam = gates.Lambda.detach().tolist()
    for row in range(2):
        x, y = e[row].tolist(), h[row].tolist()
        for j in range(d):
            r = 1 / (1 + math.exp(-(sum(w_r[j][k] * x[k] for k in range(d)) + b_r[j])))
            i = 1 / (1 + math.exp(-(sum(w_i[j][k] * x[k] for k in range(d)) + b_i[j])))
            a_j = math.exp(-8 * math.log(1 + math.exp(-lam[j])) * r)
            assert float(a[row, j]) == pytest.approx(a_j, rel=1e-12)
            assert float(fed[row, j]) == pytest.approx(a_j * x[j] + math.sqrt(1 - a_j**2) * i * y[j], rel=1e-9)


def test_h_hat_is_the_normalised_mixture_of_the_top_k():
    torch.manual_seed(0)
    vocab, d = 9, 4
    embed = torch.nn.Embedding(vocab, d).double()
    logits = torch.randn(2, vocab, dtype=torch.float64)
    matrix = embed.weight.detach()
    p = logits.softmax(-1)
    dense = (p @ matrix) / p.norm(dim=-1, keepdim=True)  # the formula over the whole vocabulary
    torch.testing.assert_close(normalized_mixture(embed, logits, vocab).detach(), dense, **EXACT)
    kept = logits.topk(3).indices  # [2, 3]
    q = torch.zeros_like(p).scatter(1, kept, p.gather(1, kept))  # p outside the top 3 dropped, not renormalised
    expected = (q @ matrix) / q.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(normalized_mixture(embed, logits, 3).detach(), expected, **EXACT)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_recomputed_logprobs_equal_the_sampled_ones(chat_dir, prompt):
    policy = hybrid_policy(chat_dir, answer_marker="7", prompt=prompt)  # the untrained model writes 7 in some replies
    with torch.no_grad():  # the end-of-turn token likely enough that rows end at different steps
        policy.lm.lm_head.weight[policy.stop_ids[0]] *= 3.0
    rollouts = policy.sample(prompts(policy), torch.Generator().manual_seed(2))
    assert len(set(rollouts.lengths.tolist())) > 1
    ended = [row for row in range(6) if TOKEN in rollouts.kinds[row, : rollouts.lengths[row] - 1].tolist()]
    assert ended and (rollouts.kinds == EMBED).any()  # some rows wrote the marker, then fed plain tokens
    for row in ended:
        first_plain = rollouts.kinds[row].tolist().index(TOKEN)
        text = policy.lm.tokenizer.decode(rollouts.tokens[row, : first_plain + 1], skip_special_tokens=True)
        assert "7" in text and "7" not in policy.lm.tokenizer.decode(rollouts.tokens[row, :first_plain])
    with torch.no_grad():
        new = policy.logprobs(rollouts)
    torch.testing.assert_close(new.flat(), rollouts.old.flat(), **EXACT)
    assert (rollouts.old.flat()[~rollouts.action_mask] == 0).all() and (rollouts.old.flat() < 0).any()
    assert rollouts.metrics()["hybrid/embed_ratio"] < 0.5  # the open gates fed mostly h^


def test_closed_gates_are_ordinary_token_sampling(chat_dir):
    policy = hybrid_policy(chat_dir, lambda_value=CLOSED)
    rollouts = policy.sample(prompts(policy), torch.Generator().manual_seed(4))
    assert rollouts.hybrid_mask.any()  # the gates were applied, with a = 1
    trace = plain_sampling(policy, prompts(policy), 4, 1.3, 16)
    t = rollouts.tokens.shape[1]
    assert torch.equal(trace.steps, rollouts.lengths)
    assert torch.equal(trace.tokens[:, :t], rollouts.tokens)
    torch.testing.assert_close(trace.logprobs[:, :t].float(), rollouts.old.token, **EXACT)


def test_draws_do_not_depend_on_the_batch(chat_dir):
    policy = hybrid_policy(chat_dir)
    alone, together, n = sampled_alone_and_together(policy, prompts(policy, 4), 3)
    torch.testing.assert_close(alone.mixtures[0, :n], together.mixtures[0, :n], **EXACT)
    torch.testing.assert_close(alone.old.token[0, :n], together.old.token[0, :n], **EXACT)
    # The hrpo decoder (greedy, as `eval` runs it) likewise.
    solver = ChatSolver(policy.lm, policy.prompt, 8, decoder=decoder_from_args("hrpo"))
    problems = chain_problems(4, seed=5)
    batched = solver.solve(problems)
    assert [s.text for s in batched] == [solver.solve([p])[0].text for p in problems]
    assert all(s.latent_tokens > 0 for s in batched)


def test_the_gates_and_lambda_get_gradient_and_learn_at_their_own_rates(chat_dir, tmp_path):
    overrides = chat_run_overrides(chat_dir, tmp_path, think_inputs="hybrid", lora_r=0, weight_decay=0.0)
    config = load_config(RLConfig, None, {**overrides, "learning_rate": 1e-5, "lambda_learning_rate": 1e-3})
    lm = LatentLM.from_pretrained(chat_dir, torch.float64, latent_tokens=False).eval()
    trainer = RLTrainer(config, None, lm, chain_problems(16), [], progress=False)
    gates = trainer.policy.gates
    with torch.no_grad():
        gates.Lambda.fill_(0.0)  # open, so that h^ weighs in the later tokens' log-probs
    rollouts = trainer.policy.sample(prompts(trainer.policy, 3), torch.Generator().manual_seed(1))
    trainer.policy.logprobs(rollouts).flat().sum().backward()
    for param in (gates.gate_r.weight, gates.gate_i.weight, gates.Lambda):
        assert param.grad is not None and param.grad.abs().sum() > 0
    optimizer = trainer._optimizer()
    rates = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert len(rates) == len(list(lm.parameters()))  # every parameter in exactly one group
    before = {name: p.detach().clone() for name, p in lm.named_parameters()}
    optimizer.step()  # Adam's first step moves each coordinate with a gradient by its learning rate
    for name, param in lm.named_parameters():
        moved = float((param.detach() - before[name]).abs().max())
        assert moved == pytest.approx(rates[id(param)], rel=1e-3), name
    assert {rates[id(gates.gate_i.bias)], rates[id(gates.Lambda)]} == {1e-4, 1e-3}
    assert rates[id(lm.lm_head.weight)] == 1e-5


def test_a_run_saves_the_gates_and_eval_reads_thoughts_through_them(chat_dir, tmp_path, capsys):
    overrides = chat_run_overrides(chat_dir, tmp_path, think_inputs="hybrid", max_completion_length=8)
    result = run_rl(load_config(RLConfig, None, overrides), progress=False)
    assert result.global_step == 2 and result.eval is not None and result.eval.latent_tokens > 0  # held out: hrpo
    final = str(result.final_dir)
    assert model_kind(final) == PRETRAINED and default_decoder(final) == "hrpo"
    assert default_decoder(str(chat_dir)) == "text"
    lm = load_pretrained(final)
    start = HybridGates(lm.embed.weight.shape[1], 64, 1.0, "\\boxed")
    start.reset(0.99, 0.999, torch.Generator().manual_seed(42))  # the run's seed: the gates it started with
    assert not torch.equal(lm.heads[GATES_HEAD].Lambda.detach(), start.Lambda.detach())  # trained, saved, loaded
    problems = chain_problems(4, seed=9)
    data = tmp_path / "problems.json"
    data.write_text(json.dumps([{"question": p.question, "steps": [], "answer": p.answer} for p in problems]))
    out = tmp_path / "eval"
    argv = ["eval", "--model", final, "--file", str(data), "--output-dir", str(out), "--max-new-tokens", "6"]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["decoder"] == "hrpo" and payload["results"][0]["latent_tokens"] > 0
    # The replies are those of the loaded gates; closing them (a = 1) gives plain text decoding.
    prompt = PromptBuilder(lm.tokenizer, template=BOXED_TEMPLATE)  # as `eval` prompts a chat model
    hybrid = ChatSolver(lm, prompt, 6, decoder=decoder_from_args("hrpo")).solve(load_file(str(data)))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["generated"] for r in records] == [s.text for s in hybrid]
    with torch.no_grad():
        lm.heads[GATES_HEAD].Lambda.fill_(CLOSED)
    closed = ChatSolver(lm, prompt, 6, decoder=decoder_from_args("hrpo")).solve(load_file(str(data)))
    text = ChatSolver(lm, prompt, 6).solve(load_file(str(data)))
    assert [s.text for s in closed] == [s.text for s in text]


@pytest.mark.parametrize(("prompt", "marker"), [("chat", "\\boxed"), ("layout", "###")])
def test_without_an_answer_marker_thinking_ends_at_the_prompts_own(chat_dir, prompt, marker):
    assert hybrid_policy(chat_dir, prompt=prompt).gates.settings.answer_marker == marker
    assert hybrid_policy(chat_dir, prompt=prompt, answer_marker="7").gates.settings.answer_marker == "7"


def test_settings_that_cannot_work_are_refused(chat_dir):
    refused = {
        "think_temperature": ({"think_temperature": 0.5}, "think_temperature"),
        "max_thinking_steps": ({"max_thinking_steps": 4}, "max_thinking_steps"),
        "gate lr": ({"gate_learning_rate": -1.0}, "gate_learning_rate"),
        "init order": ({"gate_init_min": 0.999, "gate_init_max": 0.99}, "gate_init_min"),
        "init one": ({"gate_init_max": 1.0}, "0 < min <= max < 1"),
        "multiplex": ({"multiplex_width": 2}, "multiplex_width"),
    }
    for fields, message in refused.values():
        with pytest.raises(ConfigError, match=message):
            hybrid_config(**fields)
    policy = hybrid_policy(chat_dir, lambda_value=None)
    with pytest.raises(ConfigError, match="the model's gates were trained with"):
        attach_gates(policy.lm, hybrid_config(temperature=0.5))
    plain = LatentLM.from_pretrained(chat_dir, torch.float64, latent_tokens=False).eval()
    with pytest.raises(UserError, match="no HRPO gates"):
        ChatSolver(plain, PromptBuilder(plain.tokenizer), 4, decoder=decoder_from_args("hrpo")).solve(chain_problems(1))
