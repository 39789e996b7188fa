"""GRPO from a model trained here with a text method (CoT): its layout prompt is the CoT solver's prompt and stop,
the accuracy reward reads a reply as the CoT evaluation does, a two-step run of each token policy (text, Multiplex,
soft, fuzzy, HRPO, EMPO) trains the model and saves a CoT model that `eval --model` reads with its own solver (and
through `--decoder` in the policy's own way), and what cannot work is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from latentreason import cli
from latentreason.config import load_config
from latentreason.errors import UserError
from latentreason.evaluation.chat_solver import ChatSolver
from latentreason.evaluation.harness import evaluate
from latentreason.evaluation.layout_prompt import LayoutPrompt
from latentreason.evaluation.solvers import Solution, TextSolver
from latentreason.layout import encode_problem
from latentreason.methods import get_method
from latentreason.methods.saved import method_for
from latentreason.methods.sft import CoTSFT
from latentreason.model.hybrid_gates import GATES_HEAD
from latentreason.model.latent_lm import META_FILE, LatentLM
from latentreason.model.pretrained import TRAINED, model_kind
from latentreason.rl.config import RLConfig
from latentreason.rl.rewards import RewardContext, build_rewards
from latentreason.rl.run import run_rl
from latentreason.rl.token_policy import reply_completions
from latentreason.rl.trainer import RLTrainer
from latentreason.training.run import run_training
from tests.helpers import build_tiny_lm, chain_problems, tiny_lm, tiny_train_config
from tests.test_token_policy import chat_run_overrides


@pytest.fixture(scope="module")
def cot_dir(tmp_path_factory):
    """A tiny CoT model trained here for 3 steps, as `latentreason train --method cot` leaves it."""
    config = tiny_train_config(get_method("cot").config_cls, tmp_path_factory.mktemp("cot") / "sft")
    return run_training("cot", config, progress=False).final_dir


@pytest.fixture(scope="module")
def held_out_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "held_out.json"
    problems = chain_problems(4, seed=9)
    path.write_text(json.dumps([{"question": p.question, "steps": p.steps, "answer": p.answer} for p in problems]))
    return path


def test_the_layout_prompt_is_the_cot_solvers_prompt_and_stop():
    lm = tiny_lm()
    prompt, problems = LayoutPrompt(lm.tokenizer), chain_problems(6, seed=3)
    assert [prompt.ids(p.question) for p in problems] == [encode_problem(lm.tokenizer, p).prompt for p in problems]
    assert prompt.stop_ids() == [lm.eos_id]
    assert lm.tokenizer.decode(prompt.think_ids()[1]) == "###"  # thinking ends where the answer marker starts
    # Decoded by the text decoder, the layout prompt gives the CoT solver's replies.
    layout = ChatSolver(lm, prompt, 12).solve(problems)
    assert [s.text for s in layout] == [s.text.strip() for s in TextSolver(lm, 12).solve(problems)]


class RepliesSolver:
    """Answers each problem with a given text, so that the evaluation harness scores exactly those texts."""

    name = "replies"

    def __init__(self, texts: list[str]):
        self.texts = texts

    def solve(self, problems):
        return [Solution(text, 0) for text in self.texts]


def test_the_reward_reads_a_reply_as_the_cot_evaluation_does():
    lm = tiny_lm()
    problem = chain_problems(1, seed=4)[0]
    wrong = dataclasses.replace(problem, answer=str((int(problem.answer) + 1) % 10))
    right_ids, wrong_ids = (encode_problem(lm.tokenizer, p) for p in (problem, wrong))
    number = lm.tokenizer(f" {problem.answer}", add_special_tokens=False)["input_ids"]
    replies = [
        right_ids.cot + right_ids.answer,  # steps \n ### answer <eos>: the layout's answer format, the right answer
        wrong_ids.cot + wrong_ids.answer,  # the same format, a wrong answer
        right_ids.cot + number + [lm.eos_id],  # the right number without the marker
    ]
    longest = max(map(len, replies))
    tokens = torch.tensor([r + [lm.pad_id] * (longest - len(r)) for r in replies])  # [3, T]
    lengths = torch.tensor([len(r) for r in replies])  # [3]
    completions = reply_completions(lm.tokenizer, tokens, lengths, RLConfig().answer_mode)
    accuracy = build_rewards(["accuracy"], RewardContext(lm, None, 1))["accuracy"]
    rewards = accuracy([problem] * 3, completions)
    assert rewards == [1.0, 0.0, 0.0]
    scored = evaluate(RepliesSolver([c.text for c in completions]), [problem] * 3, progress=False)  # eval's default
    assert [float(r["correct"]) for r in scored.records] == rewards


# Each token policy, from the CoT model; "text" fine-tunes the whole model, the others LoRA adapters.
RUNS = {
    "text": {"multiplex_width": 1, "lora_r": 0},
    "multiplex": {"multiplex_width": 3, "reward_funcs": ["test-text-length", "accuracy"], "reward_weights": [1.0, 1.0]},
    "soft": {"think_inputs": "soft", "max_completion_length": 8},
    "fuzzy": {"think_inputs": "fuzzy", "max_completion_length": 8},
    "hybrid": {"think_inputs": "hybrid"},
    "empo": {"reward_funcs": ["empo"], "reward_weights": [1.0]},  # no labels
}
# What `eval --decoder` reads each model with besides the CoT solver: its own way of thinking.
OWN_DECODER = {"soft": "soft-thinking", "fuzzy": "soft-thinking", "hybrid": "hrpo"}


def eval_cli(model, data, out, *extra: str) -> dict:
    argv = ["eval", "--model", str(model), "--file", str(data), "--output-dir", str(out), "--max-new-tokens", "8"]
    assert cli.main([*argv, "--device", "cpu", *extra]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("run", RUNS)
def test_a_run_from_a_cot_model_trains_it_and_saves_a_cot_model(cot_dir, held_out_file, tmp_path, run):
    result = run_rl(load_config(RLConfig, None, chat_run_overrides(cot_dir, tmp_path, **RUNS[run])), progress=False)
    assert result.global_step == 2
    assert result.eval is not None and result.eval.method == "cot" and result.eval.n == 4  # the CoT solver
    final = result.final_dir
    start, saved = (json.loads((d / META_FILE).read_text()) for d in (cot_dir, final))
    assert model_kind(str(final)) == TRAINED and saved["method"] == "cot"
    assert saved["method_config"] == start["method_config"]  # `eval` rebuilds the same CoT solver
    assert isinstance(method_for(LatentLM.from_pretrained(final), str(final)), CoTSFT)
    log = [json.loads(line) for line in (final.parent / "log.jsonl").read_text().splitlines() if '"reward"' in line]
    assert len(log) == 2 and all(f"rewards/{name}/mean" in log[0] for name in RUNS[run].get("reward_funcs", []))
    # Accuracy is logged beside a reward that does not read labels, and not rewarded; never twice.
    assert ("monitor/accuracy/mean" in log[0]) != ("rewards/accuracy/mean" in log[0])
    assert all(0.0 <= row.get("monitor/accuracy/mean", 0.0) <= 1.0 for row in log)
    if run != "empo":  # rewards that differ within every group: the weights (LoRA merged) moved
        before, after = (load_file(str(d / "model.safetensors")) for d in (cot_dir, final))
        assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    payload = eval_cli(final, held_out_file, tmp_path / "eval")
    assert payload["results"][0]["method"] == "cot" and payload["results"][0]["latent_tokens"] == 0
    if run in OWN_DECODER:
        own = eval_cli(final, held_out_file, tmp_path / "own", "--decoder", OWN_DECODER[run])
        assert own["decoder"] == OWN_DECODER[run] and own["results"][0]["latent_tokens"] > 0


def test_hrpo_from_a_cot_model_thinks_until_the_layouts_answer_marker(cot_dir, tmp_path):
    overrides = chat_run_overrides(cot_dir, tmp_path, think_inputs="hybrid", max_steps=1)
    result = run_rl(load_config(RLConfig, None, overrides), progress=False)
    specs = json.loads((result.final_dir / META_FILE).read_text())["heads"]
    assert specs[GATES_HEAD]["answer_marker"] == "###"  # not the chat prompts' \boxed, which CoT never writes
    assert LatentLM.from_pretrained(result.final_dir).heads[GATES_HEAD].settings.answer_marker == "###"


@pytest.mark.parametrize("think_inputs", ["soft", "fuzzy", "hybrid"])
def test_a_no_cot_model_has_no_chain_to_think_in(tmp_path, think_inputs):
    lm = build_tiny_lm("llama")
    lm.meta = {"method": "no-cot"}
    lm.save_pretrained(tmp_path / "no-cot")
    overrides = {**chat_run_overrides(tmp_path / "no-cot", tmp_path, think_inputs=think_inputs), "lora_r": 0}
    with pytest.raises(UserError, match=f"think_inputs {think_inputs}: a no-cot model answers without a chain"):
        run_rl(load_config(RLConfig, None, {**overrides, "max_completion_length": 8}), progress=False)
    text = run_rl(load_config(RLConfig, None, {**overrides, "think_inputs": "tokens"}), progress=False)
    assert text.global_step == 2  # thinking in tokens (here: the answer alone) works


def test_an_rl_recipe_for_cot_models_refuses_another_method(tmp_path, capsys):
    lm = build_tiny_lm("llama")
    lm.meta = {"method": "icot"}
    lm.save_pretrained(tmp_path / "icot")
    args = ["rl", "--config", "cot-rl-tiny", "--model_name_or_path", str(tmp_path / "icot")]
    assert cli.main([*args, "--output_dir", str(tmp_path / "rl")]) == 2
    assert "this RL recipe is for cot models, but" in capsys.readouterr().err


@pytest.mark.parametrize("think_inputs", ["tokens", "soft", "hybrid"])
def test_the_policy_of_a_cot_model_prompts_and_stops_as_its_solver(cot_dir, tmp_path, think_inputs):
    config = load_config(RLConfig, None, chat_run_overrides(cot_dir, tmp_path, think_inputs=think_inputs, lora_r=0))
    lm = LatentLM.from_pretrained(cot_dir)
    problems = chain_problems(16, seed=6)
    trainer = RLTrainer(config, method_for(lm, str(cot_dir)), lm, problems, [], progress=False)
    assert trainer.policy.prompts(problems) == [encode_problem(lm.tokenizer, p).prompt for p in problems]
    assert trainer.policy.stop_ids == [lm.eos_id]
    assert isinstance(trainer.held_out_solver(), TextSolver)
