"""Rewards: coherence parsing and scoring (with the reference's flaws fixed), accuracy, format, combining."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError
from latentreason.rl.coherence import coherence, step_operands, step_result
from latentreason.rl.rewards import Completion, RewardContext, build_rewards, combine, decode_plans, register_reward


def test_step_result_and_operands_are_numbers():
    assert step_result("<<7+5=12>>") == 12
    assert step_result("<<3*$4=$12.50>>") == Fraction(25, 2)
    assert step_result("<<7+5>>") is None and step_result("<<7+5=>>") is None and step_result("no step") is None
    assert step_operands("<<16-3=13>>") == {16, 3}
    assert step_operands("<<-3*2=-6>>") == {-3, 2}


def test_coherence_of_a_chained_plan():
    steps = ["<<7+5=12>>", "<<12-3=9>>", "<<9*8=72>>"]
    assert coherence(steps, "72") == 1.0
    assert coherence(steps, "71") == pytest.approx(2 / 3)  # the last step is not the answer
    assert coherence(["<<2+2=4>>", "<<14-1=13>>"], "13") == 0.5  # 4 is not used by 14-1: numbers, not substrings
    assert coherence(["<<2+2=4>>", "<<4.0-1=3>>"], "3") == 1.0  # 4 == 4.0 as numbers
    assert coherence(["<<3*4=12>>", "<<12/2=6>>"], "6") == 1.0  # "12/2" is two operands, not the fraction 6


def test_unparsable_steps_and_empty_plans_are_not_coherent():
    assert coherence(["<<7+5>>", "<<5-3=2>>"], "2") == 0.5  # the reference counted the empty match
    assert coherence(["<<1+1=2>>", "<<2+1=3>>"], None) == 0.5  # no answer: the last step cannot match
    assert coherence([], "3") == 0.0  # the reference gives 1.0
    assert coherence([], "3", empty=1.0) == 1.0


class CountingDecoder:
    """Decodes a group to the token ids of a fixed text per group index; counts calls."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.texts, self.calls = tokenizer, texts, 0

    def generate(self, latents, max_new_tokens):
        self.calls += 1
        # Each group's latents carry its index in their first value.
        return [self.tokenizer(self.texts[int(g[0, 0])], add_special_tokens=False)["input_ids"] for g in latents]


def test_plans_are_decoded_in_one_batched_call_and_scored():
    from tests.helpers import tiny_lm

    lm = tiny_lm()
    texts = ["<<1+2=3>>", "<<3*3=9>>", "<<5+5=0>>"]
    decoder = CountingDecoder(lm.tokenizer, texts)
    context = RewardContext(lm, decoder, c_thought=2)

    def latents(groups):  # [2 * len(groups), d], group g's first value = its text index
        out = torch.zeros(2 * len(groups), 4)
        out[0::2, 0] = torch.tensor(groups, dtype=torch.float)
        return out

    completions = [
        Completion("### 9", latents([0, 1])),
        Completion("### 0", latents([2])),
        Completion("### 1", latents([])),
    ]
    problems = [Problem("q", [], "9"), Problem("q", [], "0"), Problem("q", [], "1")]
    plans = decode_plans(context, completions)
    assert decoder.calls == 1
    assert plans == [texts[:2], texts[2:], []]
    scores = build_rewards(["coherence", "accuracy", "format"], context)
    assert scores["coherence"](problems, completions) == [1.0, 1.0, 0.0]
    assert scores["accuracy"](problems, [Completion("### 9", latents([])), Completion("### 1", latents([]))]) == [
        1.0,
        0.0,
    ]
    assert scores["format"](problems[:2], [Completion("### 9", latents([])), Completion("no answer", latents([]))]) == [
        1.0,
        0.0,
    ]


def test_combine_gates_coherence_by_accuracy_and_weights_the_rest():
    scores = {"accuracy": [1.0, 0.0], "format": [1.0, 1.0], "coherence": [0.5, 1.0]}
    weights = {"accuracy": 1.0, "format": 0.5, "coherence": 0.1}
    torch.testing.assert_close(combine(scores, weights, "accuracy"), torch.tensor([1.55, 0.5]))
    coherence_only = {"format": [1.0, 0.0], "coherence": [0.5, 1.0]}
    torch.testing.assert_close(
        combine(coherence_only, {"format": 0.5, "coherence": 1.0}, "none"), torch.tensor([1.0, 1.0])
    )
    with pytest.raises(ConfigError, match="accuracy"):
        combine(coherence_only, {"format": 0.5, "coherence": 1.0}, "accuracy")


def test_users_register_their_own_rewards_and_unknown_names_are_refused():
    @register_reward("short_plan")
    def short_plan(context):
        return lambda problems, completions: [1.0 / (1 + c.num_latents) for c in completions]

    fns = build_rewards(["short_plan"], RewardContext(None, None, 2))
    assert fns["short_plan"]([None], [Completion("", torch.zeros(3, 4))]) == [0.25]
    with pytest.raises(ConfigError, match="unknown"):
        build_rewards(["acuracy"], RewardContext(None, None, 2))


def test_empo_rewards_the_share_of_the_group_in_each_answer_cluster():
    """Two groups of four, hand-computed: 18 and 18.0 are one cluster; a rollout without an answer
    gets 0 and is in no cluster; the reference answer is never read (it is wrong here on purpose)."""
    problems = [Problem("q1", [], "999")] * 4 + [Problem("q2", [], "999")] * 4
    texts = ["### 18", "### 18.0", "### 7", "no answer", "### 3", "### 4", "### 5", "### 3"]
    completions = [Completion(t, torch.zeros(0, 4), "strict") for t in texts]
    empo = build_rewards(["empo"], RewardContext(lm=None, decoder=None, c_thought=1, group_size=4))["empo"]
    assert empo(problems, completions) == [0.5, 0.5, 0.25, 0.0, 0.5, 0.25, 0.25, 0.5]


def test_empo_refuses_rollouts_that_do_not_form_whole_groups():
    empo = build_rewards(["empo"], RewardContext(lm=None, decoder=None, c_thought=1, group_size=4))["empo"]
    with pytest.raises(ValueError, match="groups of 4"):
        empo([Problem("q", [], "1")] * 3, [Completion("### 1", torch.zeros(0, 4))] * 3)
