"""Coherence of a decoded latent plan: does each step's result feed a later step (the last, the answer)?

Each latent step group is decoded back to text by the step decoder, e.g. '<<7+5=2>>'. A step's result
is the number after its last '=' and before '>>'; its operands are the numbers before that '='.
Step i (not the last) is coherent when its result equals, as a number, an operand of a later step;
the last step is coherent when its result equals the final answer. Score = coherent steps / steps.

Fixed against the reference: a step without a parsable result never matches (the reference counts an
empty regex match as a match); numbers match as numbers, so '4' does not match '14' (the reference
tests substrings); a plan with no steps scores `empty` (the reference gives it a perfect 1.0).
"""

from __future__ import annotations

import re
from fractions import Fraction

from latentreason.data.answers import parse_number

_RESULT = re.compile(r"=([^=<>]*)>>")
# Operands are plain numbers: "12/2" is two operands, not the fraction 6 (a division step).
_OPERAND = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")


def step_result(step: str) -> Fraction | None:
    """The number after the last '=' of a '<<expr=value>>' step, or None if there is none."""
    found = _RESULT.findall(step)
    return parse_number(found[-1].strip()) if found else None


def step_operands(step: str) -> set[Fraction]:
    """Numbers on the left of the step's last '=' (inside its last '<<', when it has one)."""
    head = step.rsplit("=", 1)[0] if "=" in step else step
    head = head.rsplit("<<", 1)[-1]
    values = (parse_number(m) for m in _OPERAND.findall(head))
    return {v for v in values if v is not None}


def coherence(steps: list[str], answer: str | None, empty: float = 0.0) -> float:
    """Fraction of decoded steps whose result is used later (the last step's by `answer`)."""
    if not steps:
        return empty
    final = parse_number(answer) if answer is not None else None
    operands = [step_operands(s) for s in steps]
    matched = 0
    for i, step in enumerate(steps):
        result = step_result(step)
        if result is None:
            continue
        if i == len(steps) - 1:
            matched += final is not None and result == final
        else:
            matched += any(result in later for later in operands[i + 1 :])
    return matched / len(steps)
