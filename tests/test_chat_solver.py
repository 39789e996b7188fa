"""ChatSolver on a tiny pretrained-style model: prompts, batching, stop tokens, reasoning-token counts."""

from __future__ import annotations

import pytest

from latentreason.decoding import decoder_from_args
from latentreason.engine.batch import left_pad
from latentreason.engine.decode import decode
from latentreason.engine.sampling import Sampling
from latentreason.errors import ConfigError
from latentreason.evaluation.chat_solver import ChatSolver
from latentreason.evaluation.prompting import PromptBuilder
from latentreason.model.pretrained import load_pretrained
from tests.helpers import chain_problems, save_tiny_chat_model


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_pretrained(str(save_tiny_chat_model(tmp_path_factory.mktemp("chat") / "model")))


def test_batched_replies_equal_one_by_one(lm):
    problems = chain_problems(3, seed=1)  # questions of different lengths: left padding differs per row
    solver = ChatSolver(lm, PromptBuilder(lm.tokenizer), max_new_tokens=8)
    together = solver.solve(problems)
    alone = [solver.solve([p])[0] for p in problems]
    assert [s.text for s in together] == [s.text for s in alone]
    assert [s.text_tokens for s in together] == [s.text_tokens for s in alone]
    assert all(s.latent_tokens == 0 for s in together)


def test_a_reply_ends_at_a_stop_token_which_is_not_counted(lm):
    problem = chain_problems(1, seed=1)[0]
    prompt = PromptBuilder(lm.tokenizer)
    ids = prompt.ids(problem.question)
    batch = left_pad([ids], lm.pad_id)
    free = decode(lm, batch["input_ids"], batch["attention_mask"], 6, stop_ids=[-1]).tokens[0].tolist()
    third = free[2]
    assert third not in free[:2], "pick a seed whose third token is new, so the reply stops exactly there"
    # The third generated token is made a stop id (as the model's generation config would list it).
    stopping = PromptBuilder(lm.tokenizer, extra_stop_ids=[third])
    [solution] = ChatSolver(lm, stopping, max_new_tokens=6).solve([problem])
    assert solution.text_tokens == 2
    assert solution.text == lm.tokenizer.decode(free[:2], skip_special_tokens=True).strip()
    [cut] = ChatSolver(lm, prompt, max_new_tokens=6).solve([problem])
    assert cut.text_tokens == 6  # never stopped: every generated token counts


def test_sampling_follows_the_temperature(lm):
    import torch

    problems = chain_problems(4, seed=3)
    torch.manual_seed(0)
    greedy = ChatSolver(lm, PromptBuilder(lm.tokenizer), max_new_tokens=8).solve(problems)
    sampled = ChatSolver(lm, PromptBuilder(lm.tokenizer), max_new_tokens=8, sampling=Sampling(5.0)).solve(problems)
    assert [s.text for s in greedy] != [s.text for s in sampled]


def test_samples_share_a_prefill_and_each_equals_its_own_run(lm):
    problems = chain_problems(3, seed=4)
    sampling = Sampling(temperature=1.5, top_p=0.9)
    many = ChatSolver(lm, PromptBuilder(lm.tokenizer), 8, sampling, samples=3, seed=7).solve(problems)
    assert all(len(s.samples) == 3 and s.samples[0].text == s.text for s in many)
    assert len({r.text for s in many for r in s.samples}) > 3  # the samples really differ
    # A problem's samples do not depend on the other problems in the batch.
    alone = ChatSolver(lm, PromptBuilder(lm.tokenizer), 8, sampling, samples=3, seed=7).solve(problems[1:2])
    assert [r.text for r in alone[0].samples] == [r.text for r in many[1].samples]


def test_a_decoder_s_soft_steps_count_as_latent_tokens(lm):
    problems = chain_problems(3, seed=1)
    text = ChatSolver(lm, PromptBuilder(lm.tokenizer), max_new_tokens=6).solve(problems)
    greedy_soft = decoder_from_args("soft-thinking", {"top_k": 1, "cold_stop_steps": 0})
    soft = ChatSolver(lm, PromptBuilder(lm.tokenizer), 6, decoder=greedy_soft).solve(problems)
    assert [s.text for s in soft] == [s.text for s in text]  # Soft Thinking with top-k 1 is greedy decoding
    assert [s.latent_tokens + s.text_tokens for s in soft] == [s.text_tokens for s in text]
    assert all(s.latent_tokens > 0 for s in soft)


def test_a_reply_of_no_tokens_is_refused(lm):
    with pytest.raises(ConfigError, match="max_new_tokens: a reply needs at least 1 token, got 0"):
        ChatSolver(lm, PromptBuilder(lm.tokenizer), max_new_tokens=0)
