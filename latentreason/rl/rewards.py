"""Reward functions: each maps (problems, completions) to one float per completion.

Built-in: `accuracy` (answer equivalence), `format` (an answer was produced), `coherence` (the decoded
latent plan is chained, see coherence.py), `empo` (agreement within the group, no labels). Add your own
with `@register_reward("name")` on a factory `(RewardContext) -> fn(problems, completions) -> list[float]`
and list it in `reward_funcs`.

The total is sum_i w_i * r_i, except that with `coherence_gate: accuracy` the coherence term is
multiplied by accuracy first (the reference: 1 * acc + 0.5 * fmt + 0.1 * coh * acc). The reference's
coherence-only variant needs no answer labels: reward_funcs [format, coherence], weights [0.5, 1],
coherence_gate none.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from latentreason.data.answers import extract_answer, is_correct
from latentreason.data.problems import Problem
from latentreason.data.votes import vote_key
from latentreason.errors import ConfigError
from latentreason.evaluation.harness import answer_mode_for
from latentreason.rl.coherence import coherence


@dataclass
class Completion:
    """One sampled rollout as reward functions see it."""

    text: str  # the answer text after <eot>
    latents: torch.Tensor  # [k, d] the thoughts fed, k = num_latents
    answer_mode: str = "strict"

    @property
    def num_latents(self) -> int:
        return self.latents.shape[0]

    def prediction(self, reference: str) -> str | None:
        return extract_answer(self.text, answer_mode_for(reference, self.answer_mode))


@dataclass
class RewardContext:
    lm: object  # the LatentLM being trained
    decoder: object  # a frozen StepDecoder (or None when the method has none)
    c_thought: int
    max_step_tokens: int = 16
    coherence_empty: float = 0.0
    group_size: int = 1  # rollouts per question; a group's rollouts are consecutive


RewardFn = Callable[[list[Problem], list[Completion]], list[float]]
REWARDS: dict[str, Callable[[RewardContext], RewardFn]] = {}


def register_reward(name: str):
    def wrap(factory):
        REWARDS[name] = factory
        return factory

    return wrap


def build_rewards(names: list[str], context: RewardContext) -> dict[str, RewardFn]:
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ConfigError(f"reward_funcs: unknown {unknown}; available: {', '.join(sorted(REWARDS))}")
    return {name: REWARDS[name](context) for name in names}


@register_reward("accuracy")
def accuracy_reward(context: RewardContext) -> RewardFn:
    def score(problems, completions):
        return [
            float(is_correct(c.text, p.answer, mode=answer_mode_for(p.answer, c.answer_mode)))
            for p, c in zip(problems, completions)
        ]

    return score


@register_reward("format")
def format_reward(context: RewardContext) -> RewardFn:
    def score(problems, completions):
        return [float(c.prediction(p.answer) is not None) for p, c in zip(problems, completions)]

    return score


def decode_plans(context: RewardContext, completions: list[Completion]) -> list[list[str]]:
    """Every completion's latent groups decoded to text by the step decoder, in one batched call."""
    c = context.c_thought
    groups, owners = [], []
    for i, comp in enumerate(completions):
        usable = comp.num_latents // c * c
        for start in range(0, usable, c):
            groups.append(comp.latents[start : start + c])
            owners.append(i)
    plans: list[list[str]] = [[] for _ in completions]
    if not groups:
        return plans
    ids = context.decoder.generate(torch.stack(groups), context.max_step_tokens)  # G id lists
    texts = context.lm.tokenizer.batch_decode(ids, skip_special_tokens=True)
    for owner, text in zip(owners, texts):
        plans[owner].append(text)
    return plans


@register_reward("coherence")
def coherence_reward(context: RewardContext) -> RewardFn:
    if context.decoder is None:
        raise ConfigError(
            "reward 'coherence' decodes the latent plan with a step decoder, which only ATP-Latent models have: "
            "leave it out of reward_funcs"
        )

    def score(problems, completions):
        plans = decode_plans(context, completions)
        return [
            coherence(plan, comp.prediction(p.answer), context.coherence_empty)
            for p, comp, plan in zip(problems, completions, plans)
        ]

    return score


@register_reward("empo")
def empo_reward(context: RewardContext) -> RewardFn:
    """EMPO (semantic entropy minimisation): a rollout's reward is the share of its group whose final answers
    fall in its semantic cluster, so GRPO lowers the group's semantic entropy without any label.

    Clusters are the answers the harness's majority vote counts as equal (numerically equal numbers, else
    normalised text), read with the run's answer_mode alone, never with the reference; a rollout without an
    answer gets 0 and counts in no cluster.
    """

    def score(problems, completions):
        g = context.group_size
        if len(completions) % g:
            raise ValueError(f"reward 'empo': {len(completions)} rollouts do not split into groups of {g}")
        keys = [vote_key(extract_answer(c.text, c.answer_mode), "number") for c in completions]
        rewards = []
        for start in range(0, len(keys), g):
            counts = Counter(key for key in keys[start : start + g] if key is not None)
            rewards += [counts[key] / g if key is not None else 0.0 for key in keys[start : start + g]]
        return rewards

    return score


def combine(scores: dict[str, list[float]], weights: dict[str, float], gate: str) -> torch.Tensor:
    """Weighted sum of the reward columns; gate='accuracy' multiplies coherence by accuracy first. -> [B]."""
    columns = {name: torch.tensor(values, dtype=torch.float32) for name, values in scores.items()}
    if gate == "accuracy" and "coherence" in columns:
        if "accuracy" not in columns:
            raise ConfigError("coherence_gate 'accuracy' needs 'accuracy' in reward_funcs")
        columns["coherence"] = columns["coherence"] * columns["accuracy"]
    return sum(weights[name] * column for name, column in columns.items())
