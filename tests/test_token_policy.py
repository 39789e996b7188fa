"""GRPO from a pretrained chat model that thinks in tokens (text, Multiplex Thinking): sampled log-probs equal
their one-call recomputation (after a chat prompt, and after a model trained here's layout prompt), K = 1 is
ordinary token sampling, and a run trains, saves and evaluates as a plain model. Models are float64, so "equal"
is `EXACT`."""

from __future__ import annotations

import pytest
import torch

from latentreason.config import load_config
from latentreason.engine.decode import TokenPolicy
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import prefill, run_steps
from latentreason.evaluation.layout_prompt import LayoutPrompt
from latentreason.evaluation.prompting import PromptBuilder
from latentreason.model.latent_lm import LatentLM
from latentreason.model.pretrained import PRETRAINED, load_pretrained, model_kind
from latentreason.rl.config import RLConfig
from latentreason.rl.rewards import register_reward
from latentreason.rl.run import run_rl
from latentreason.rl.token_policy import MultiplexPolicy
from tests.helpers import EXACT, build_tiny_lm, chain_problems, save_tiny_chat_model

# The prompts a token policy runs after: a chat model's template, or a text method's training layout.
PROMPTS = ("chat", "layout")


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return save_tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")


def model_and_prompt(chat_dir, prompt: str = "chat"):
    """A float64 model and its prompt: the tiny chat model in its chat template ("chat"), or a tiny model as trained
    here (bos and eos, latent tokens) in its training layout ("layout")."""
    if prompt == "chat":
        lm = LatentLM.from_pretrained(chat_dir, torch.float64, latent_tokens=False).eval()
        return lm, PromptBuilder(lm.tokenizer)
    lm = build_tiny_lm("llama", seed=1, dtype=torch.float64)
    return lm, LayoutPrompt(lm.tokenizer)


def chat_policy(chat_dir, width: int, max_steps: int = 12, prompt: str = "chat"):
    lm, builder = model_and_prompt(chat_dir, prompt)
    return MultiplexPolicy(lm, builder, width, temperature=1.3, max_completion_length=max_steps)


def prompts(policy, n=6):
    return policy.prompts(chain_problems(n, seed=5))


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("width", [1, 3])
def test_recomputed_logprobs_equal_the_sampled_ones(chat_dir, width, prompt):
    policy = chat_policy(chat_dir, width, prompt=prompt)
    # The untrained model's end-of-turn token must be likely enough that rows end at different steps.
    with torch.no_grad():
        policy.lm.lm_head.weight[policy.stop_ids[0]] *= 3.0
    rollouts = policy.sample(prompts(policy), torch.Generator().manual_seed(2))
    assert len(set(rollouts.lengths.tolist())) > 1  # rows of different lengths share the batch
    assert rollouts.samples.shape[2] == width
    with torch.no_grad():
        new = policy.logprobs(rollouts)
    torch.testing.assert_close(new.flat(), rollouts.old.flat(), **EXACT)
    mask = rollouts.action_mask
    assert (rollouts.old.flat()[~mask] == 0).all() and (rollouts.old.flat()[mask] < 0).any()
    if width > 1:
        assert rollouts.metrics()["multiplex/mixed_steps"] > 0  # the K samples really differ


def plain_sampling(policy, prompts: list[list[int]], seed: int, temperature: float, steps: int):
    """The engine's own token sampler's trace on `prompts`, with the row seeds `policy.sample` draws from a
    generator seeded with `seed`."""
    rows, lm = len(prompts), policy.lm
    seeds = torch.randint(0, 2**62, (rows,), generator=torch.Generator().manual_seed(seed))
    engine = TokenPolicy(rows, lm.device, policy.stop_ids, steps, Sampling(temperature=temperature), seeds)
    return run_steps(lm, prefill(lm, prompts), engine, steps, rows)


def sampled_alone_and_together(policy, prompts: list[list[int]], seed: int):
    """(the first prompt's rollout sampled alone, all prompts' rollouts, its steps n), both from the same first row
    seed; its steps and tokens must agree."""
    together = policy.sample(prompts, torch.Generator().manual_seed(seed))
    alone = policy.sample(prompts[:1], torch.Generator().manual_seed(seed))
    n = int(together.lengths[0])
    assert int(alone.lengths[0]) == n
    assert alone.tokens[0, :n].tolist() == together.tokens[0, :n].tolist()
    return alone, together, n


def test_width_one_is_ordinary_token_sampling(chat_dir):
    policy = chat_policy(chat_dir, 1)
    rollouts = policy.sample(prompts(policy), torch.Generator().manual_seed(4))
    trace = plain_sampling(policy, prompts(policy), 4, 1.3, 12)
    t = rollouts.samples.shape[1]
    assert torch.equal(trace.steps, rollouts.lengths)
    assert torch.equal(trace.tokens[:, :t][rollouts.token_mask], rollouts.tokens[rollouts.token_mask])
    torch.testing.assert_close(trace.logprobs[:, :t].float(), rollouts.old.token, **EXACT)


def test_gradients_reach_the_model_through_the_recomputation(chat_dir):
    policy = chat_policy(chat_dir, 3)
    rollouts = policy.sample(prompts(policy, 4), torch.Generator().manual_seed(1))
    policy.logprobs(rollouts).flat().sum().backward()
    grads = [p.grad for p in policy.lm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@register_reward("test-text-length")
def text_length_reward(context):
    """Differs within a group whatever an untrained model writes, so every update has advantages to follow."""
    return lambda problems, completions: [float(len(c.text)) for c in completions]


def chat_run_overrides(chat_dir, tmp_path, **fields) -> dict:
    """A two-step LoRA GRPO run of the tiny chat model, with rewards that differ within every group."""
    return {
        "model_name_or_path": str(chat_dir),
        "dataset": "synthetic:chain",
        "dataset_params": {"num_steps": 2},
        "num_train_examples": 16,
        "num_eval_examples": 4,
        "output_dir": str(tmp_path / "rl"),
        "questions_per_step": 2,
        "num_generations": 4,
        "per_device_train_batch_size": 4,
        "max_completion_length": 6,
        "max_new_tokens": 6,
        "max_steps": 2,
        "learning_rate": 1e-2,
        "lora_r": 4,
        "reward_funcs": ["test-text-length", "empo"],
        "reward_weights": [1.0, 1.0],
        "coherence_gate": "none",
        **fields,
    }


@pytest.mark.parametrize("width", [1, 2])
def test_a_run_from_a_chat_model_trains_with_lora_and_saves_a_plain_model(chat_dir, tmp_path, width):
    overrides = chat_run_overrides(chat_dir, tmp_path, multiplex_width=width)
    result = run_rl(load_config(RLConfig, None, overrides), progress=False)
    assert result.global_step == 2 and result.eval is not None and result.eval.n == 4
    assert model_kind(str(result.final_dir)) == PRETRAINED  # `eval --model` reads it as a chat model
    trained, start = load_pretrained(str(result.final_dir)), load_pretrained(str(chat_dir))
    before, after = start.model.state_dict(), trained.model.state_dict()
    assert before.keys() == after.keys()  # the adapters are merged: a plain model
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_multiplex_is_refused_for_a_latent_model(tmp_path):
    from latentreason.errors import UserError
    from latentreason.methods import get_method
    from latentreason.training.run import run_training
    from tests.helpers import tiny_train_config

    sft = run_training("colar", tiny_train_config(get_method("colar").config_cls, tmp_path / "sft"), progress=False)
    config = load_config(
        RLConfig,
        None,
        {
            "model_name_or_path": str(sft.final_dir),
            "output_dir": str(tmp_path / "rl"),
            "dataset": "synthetic:chain",
            "num_train_examples": 32,
            "multiplex_width": 3,
        },
    )
    with pytest.raises(UserError, match="multiplex_width 3"):
        run_rl(config, progress=False)
