"""Rewards for test-time search over replies: a user's verifier, the model's own verification, or an oracle.

Each maps (questions, replies, references) to one float per reply; higher is better, 0 the best the built-in
ones give.

- `Verifier`: any callable(question, reply) -> float the user supplies.
- `SelfVerification` (LatentSeek's self-reward, arXiv 2505.13308): the model answers four verification
  questions about its own reply, each ending in a True/False verdict; the checks are the calculations (weight 2),
  the final answer (1), completeness (2) and understanding of the problem (1), and the reward is
  -(weight of the failed checks) / 6. An optional format pattern the reply must match adds 2 to the failed
  weight when it does not (as the reference code does), so such a reply scores below -1.
- `oracle_reward`: 0 for a reply whose final answer matches the reference, -1 otherwise. It reads the labels,
  so it measures what a perfect verifier would allow and is never a method's own result.
"""

from __future__ import annotations

import re
from typing import Protocol

import torch

from latentreason.data.answers import is_correct
from latentreason.decoding.prompts import user_turn
from latentreason.engine.decode import decode_from
from latentreason.engine.steps import prefill

VERDICT = "Verdict:"
CHECKS = (  # (what the check asks, its weight)
    ("Check every calculation in the solution. Is each one done correctly?", 2),
    ("Is the final answer of the solution the correct answer to the problem?", 1),
    ("Does the solution answer everything the problem asks, and state a clear final answer?", 2),
    ("Does the solution read the problem correctly: its quantities, its conditions and what it asks for?", 1),
)
FORMAT_WEIGHT = 2
_VERDICT_RE = re.compile(r"\b(true|false)\b", re.IGNORECASE)


class Verifier(Protocol):
    def __call__(self, question: str, reply: str) -> float: ...


def verification_prompt(check: str, question: str, reply: str) -> str:
    return (
        f"You are checking a solution to a problem. {check}\n\n"
        f"Problem:\n{question}\n\nSolution:\n{reply}\n\n"
        f"Think it through briefly, then end with one line: '{VERDICT} True' or '{VERDICT} False'."
    )


def approves(verification: str) -> bool:
    """Whether a verification reply ends in a True verdict (the first true/false after the last 'Verdict:');
    a reply without a verdict does not approve."""
    at = verification.lower().rfind(VERDICT.lower())
    if at < 0:
        return False
    match = _VERDICT_RE.search(verification, at + len(VERDICT))
    return match is not None and match.group(1).lower() == "true"


def self_reward(approved: list[bool], format_ok: bool = True) -> float:
    """-(weight of the failed checks, plus FORMAT_WEIGHT when the format fails) / total check weight."""
    failed = sum(weight for (_, weight), ok in zip(CHECKS, approved, strict=True) if not ok)
    return -(failed + (0 if format_ok else FORMAT_WEIGHT)) / sum(weight for _, weight in CHECKS)


class SelfVerification:
    """The model verifies its own replies: 4 greedy verification replies per reply, in one batch."""

    def __init__(self, stop_ids: list[int], max_tokens: int, format_pattern: str = "", chat_template: str = "auto"):
        self.stop_ids, self.max_tokens, self.chat_template = stop_ids, max_tokens, chat_template
        self.format = re.compile(format_pattern, re.DOTALL) if format_pattern else None

    @torch.no_grad()
    def __call__(self, lm, questions: list[str], replies: list[str]) -> list[float]:
        prompts = [
            user_turn(lm.tokenizer, verification_prompt(check, question, reply), self.chat_template)
            for question, reply in zip(questions, replies, strict=True)
            for check, _ in CHECKS
        ]
        out = decode_from(lm, prefill(lm, prompts), self.max_tokens, self.stop_ids)
        texts = [
            lm.tokenizer.decode(out.tokens[i, : out.lengths[i]], skip_special_tokens=True) for i in range(len(prompts))
        ]
        n = len(CHECKS)
        return [
            self_reward(
                [approves(text) for text in texts[i * n : (i + 1) * n]],
                self.format is None or self.format.search(reply) is not None,
            )
            for i, reply in enumerate(replies)
        ]


def oracle_reward(reply: str, reference: str) -> float:
    """0 when the reply's final answer matches the reference, else -1 (reads the label: analysis only)."""
    return 0.0 if is_correct(reply, reference) else -1.0
