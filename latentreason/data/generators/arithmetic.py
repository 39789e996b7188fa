"""Multi-step arithmetic with GSM8k-Aug style equation steps ("<<4-2=2>> <<2*5=10>>").

The question is a short templated text naming each intermediate result ("Let P be 16 minus 3.
Let Q be P times 2. What is Q?"), so the answer is fully determined by the question. Steps are
`<<expr=value>>` with the values of earlier results substituted, as in GSM8k-Aug; later steps reuse
earlier results and every result feeds into the last one, which is the answer. All intermediate
values are positive integers.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError

NAME = "arithmetic"

# Steps per problem in GSM8k-Aug valid.txt (500 records; the 6 with no step are left out).
STEP_WEIGHTS = {1: 26, 2: 155, 3: 140, 4: 91, 5: 53, 6: 18, 7: 8, 8: 3}
OP_WEIGHTS = {"*": 665, "+": 493, "/": 329, "-": 308}  # operator counts in the same file
THREE_OPERAND_PROB = 0.12  # 11% of real steps have two operators
FRESH_PROB = 0.6  # weight of a step from two new numbers: ~18% of later steps reuse nothing (real 20%)
MERGE_PROB = 0.35  # a step that combines two pending results
MAX_TRIES = 50

NAMES = "PQRSTUVWXYZ"  # not "A": "Let A be ..." reads like an article
_WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_PHRASES = {
    "+": ["{x} plus {y}", "the sum of {x} and {y}", "{y} more than {x}"],
    "-": ["{x} minus {y}", "{y} less than {x}", "{x} take away {y}"],
    "*": ["{x} times {y}", "the product of {x} and {y}", "{x} multiplied by {y}"],
    "/": ["{x} divided by {y}", "the quotient of {x} and {y}", "{x} shared equally among {y}"],
}
_SAME_PRECEDENCE = {"+": "+-", "-": "+-", "*": "*/", "/": "*/"}
_STEP = re.compile(r"<<([^=<>]*)=([^=<>]*)>>")


def parse_step(step: str) -> tuple[str, str]:
    """'<<4-2=2>>' -> ('4-2', '2'); ValueError if the step is not in that form."""
    match = _STEP.fullmatch(step)
    if match is None:
        raise ValueError(f"not a <<expr=value>> step: {step!r}")
    return match.group(1), match.group(2)


def evaluate(expression: str) -> Fraction:
    """Exact value of an expression of decimals, + - * / and parentheses, without eval()."""
    tokens = re.findall(r"\d+\.?\d*|\.\d+|\S", expression)
    pos = 0

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens) or (expected is not None and tokens[pos] != expected):
            raise ValueError(f"malformed expression {expression!r}")
        pos += 1
        return tokens[pos - 1]

    def atom() -> Fraction:
        token = take()
        if token == "(":
            value = total()
            take(")")
            return value
        if token == "-":
            return -atom()
        if token[0].isdigit() or token[0] == ".":
            return Fraction(token)
        raise ValueError(f"unexpected {token!r} in {expression!r}")

    def product() -> Fraction:
        value = atom()
        while pos < len(tokens) and tokens[pos] in "*/":
            op, right = take(), atom()
            if op == "/" and right == 0:
                raise ValueError(f"division by zero in {expression!r}")
            value = value * right if op == "*" else value / right
        return value

    def total() -> Fraction:
        value = product()
        while pos < len(tokens) and tokens[pos] in "+-":
            op, right = take(), product()
            value = value + right if op == "+" else value - right
        return value

    result = total()
    if pos != len(tokens):
        raise ValueError(f"trailing input in {expression!r}")
    return result


class _Settings:
    def __init__(self, ops: str, low: int, high: int, max_value: int):
        self.ops, self.low, self.high, self.max_value = ops, low, high, max_value

    def number(self, rng: random.Random, low: int | None = None, high: int | None = None) -> int | None:
        """A new operand, log-uniform so small numbers dominate as in GSM8k; None if the range is empty."""
        low = self.low if low is None else max(low, self.low)
        high = self.high if high is None else min(high, self.high)
        if low > high:
            return None
        return min(high, int(math.exp(rng.uniform(math.log(low), math.log(high + 1)))))


def _apply(op: str, x: int, y: int, settings: _Settings) -> int | None:
    """x op y if it is a positive integer no larger than max_value, else None."""
    if op == "+":
        value = x + y
    elif op == "-":
        value = x - y
    elif op == "*":
        value = x * y
    else:
        value = x // y if y > 1 and x % y == 0 else 0
    return value if 1 <= value <= settings.max_value else None


def _new_operand(rng: random.Random, op: str, known: int, known_left: bool, s: _Settings) -> int | None:
    """A new number that makes `known op new` (or `new op known`) valid, or None."""
    if op == "-":
        return s.number(rng, high=known - 1) if known_left else s.number(rng, low=known + 1)
    if op == "/" and known_left:
        divisors = [d for d in range(max(2, s.low), min(s.high, known) + 1) if known % d == 0]
        return rng.choice(divisors) if divisors else None
    if op == "/":
        quotient = s.number(rng, low=2, high=s.high // known)
        return None if quotient is None else known * quotient
    return s.number(rng)


Operand = tuple[str | None, int]  # (name of an earlier result or None for a new number, value)


def _step(rng: random.Random, used: list[Operand], s: _Settings) -> tuple[list[Operand], list[str]] | None:
    """Operands and operators of one valid step using the earlier results `used` (0, 1 or 2)."""
    op = rng.choices(s.ops, weights=[OP_WEIGHTS[o] for o in s.ops])[0]
    if not used:
        y = s.number(rng, low=2 if op == "/" else None)
        x = _new_operand(rng, op, y, False, s) if op in "-/" else s.number(rng)
        operands: list[Operand] = [(None, x), (None, y)]
    elif len(used) == 1:
        left = rng.random() < 0.8  # the earlier result usually comes first ("P minus 3")
        new = (None, _new_operand(rng, op, used[0][1], left, s))
        operands = [used[0], new] if left else [new, used[0]]
    else:
        operands = rng.sample(used, 2)
    values = [value for _, value in operands]
    if None in values or _apply(op, values[0], values[1], s) is None:
        return None
    ops = [op]
    if rng.random() < THREE_OPERAND_PROB:
        # Same precedence keeps left-to-right reading equal to the usual arithmetic meaning.
        second = rng.choice([o for o in _SAME_PRECEDENCE[op] if o in s.ops])
        value = _apply(op, values[0], values[1], s)
        extra = _new_operand(rng, second, value, True, s)
        if extra is not None and _apply(second, value, extra, s) is not None:
            operands.append((None, extra))
            ops.append(second)
    return operands, ops


def _problem(rng: random.Random, num_steps: int, s: _Settings) -> tuple[str, list[str], list[int]] | None:
    """(question, steps, results) or None if this draw got stuck."""
    pending: list[Operand] = []  # results no later step has used yet; all must feed the last one
    sentences, steps, results = [], [], []
    for index in range(num_steps):
        remaining = num_steps - index
        # "fresh" adds a pending result, "extend" keeps the count, "merge" removes one.
        weights = {
            "fresh": FRESH_PROB if len(pending) + 1 <= remaining else 0.0,
            "merge": MERGE_PROB if len(pending) >= 2 else 0.0,
            "extend": 1.0 if pending and len(pending) <= remaining else 0.0,
        }
        kind = rng.choices(list(weights), weights=list(weights.values()))[0]
        used = {"fresh": [], "extend": pending[-1:], "merge": pending[-2:]}[kind]
        for _ in range(MAX_TRIES):
            drawn = _step(rng, used, s)
            if drawn is not None:
                break
        else:
            return None
        operands, ops = drawn
        pending = [item for item in pending if item not in used]
        spoken = [name or str(value) for name, value in operands]
        if len(ops) == 1:
            phrase = rng.choice(_PHRASES[ops[0]]).format(x=spoken[0], y=spoken[1])
        else:
            phrase = f"{spoken[0]} {_WORDS[ops[0]]} {spoken[1]} {_WORDS[ops[1]]} {spoken[2]}"
        expression = "".join(f"{value}{op}" for (_, value), op in zip(operands, ops)) + str(operands[-1][1])
        value = evaluate(expression)
        if value.denominator != 1:
            raise AssertionError(f"non-integer step {expression}")  # a bug, not a user error
        name = NAMES[index]
        sentences.append(f"Let {name} be {phrase}.")
        steps.append(f"<<{expression}={value.numerator}>>")
        results.append(value.numerator)
        pending.append((name, value.numerator))
    sentences.append(f"What is {NAMES[num_steps - 1]}?")
    return " ".join(sentences), steps, results


def generate_arithmetic(
    n: int,
    seed: int = 0,
    min_steps: int = 1,
    max_steps: int = 8,
    ops: str = "+-*/",
    min_number: int = 2,
    max_number: int = 100,
    max_value: int = 100_000,
) -> list[Problem]:
    """`n` problems. Steps per problem follow GSM8k-Aug's distribution restricted to
    [min_steps, max_steps] (counts above 8, unseen there, get the weight of the rarest, 8).
    `ops` is a subset of "+-*/"; new numbers lie in [min_number, max_number]; every result is a
    positive integer <= max_value.
    """
    if not 1 <= min_steps <= max_steps <= len(NAMES):
        raise ConfigError(f"{NAME}: need 1 <= min_steps <= max_steps <= {len(NAMES)}, got {min_steps}, {max_steps}")
    if not ops or any(op not in OP_WEIGHTS for op in ops) or len(set(ops)) != len(ops):
        raise ConfigError(f"{NAME}: ops must be distinct characters from '+-*/', got {ops!r}")
    if not 1 <= min_number < max_number <= max_value:
        raise ConfigError(f"{NAME}: need 1 <= min_number < max_number <= max_value")
    weights = {k: STEP_WEIGHTS.get(k, STEP_WEIGHTS[8]) for k in range(min_steps, max_steps + 1)}
    settings = _Settings("".join(o for o in "*+/-" if o in ops), min_number, max_number, max_value)
    params = {
        "min_steps": min_steps,
        "max_steps": max_steps,
        "ops": ops,
        "min_number": min_number,
        "max_number": max_number,
        "max_value": max_value,
    }
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        num_steps = rng.choices(list(weights), weights=list(weights.values()))[0]
        for _ in range(MAX_TRIES):
            made = _problem(rng, num_steps, settings)
            if made is not None:
                break
        else:
            raise ConfigError(f"{NAME}: cannot build {num_steps}-step problems with ops={ops!r}; widen the ranges")
        question, steps, results = made
        meta = {"generator": NAME, "params": dict(params), "seed": seed, "index": index}
        meta |= {"answer_value": results[-1], "results": results}
        problems.append(Problem(question=question, steps=steps, answer=str(results[-1]), meta=meta))
    return problems
