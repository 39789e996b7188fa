"""The demo task: a chain of single-digit operations evaluated left to right modulo 10.

Question '7 + 5 - 3 * 8', steps '<<7+5=2>> <<2-3=9>> <<9*8=2>>', answer '2'. Every intermediate value
is one digit, so one latent can hold it; without a chain of thought the model must compose all
steps in one forward pass, which a small model learns far more slowly.
"""

from __future__ import annotations

import random

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def generate_chain(
    n: int, seed: int = 0, num_steps: int = 3, ops: str = "+-*", modulus: int = 10
) -> list[Problem]:
    """`n` chains of `num_steps` operations drawn from `ops`, values modulo `modulus`."""
    if num_steps < 1 or modulus < 2 or not ops or set(ops) - set(_APPLY):
        raise ConfigError(
            f"chain task: need num_steps >= 1, modulus >= 2 and ops drawn from '+-*' "
            f"(got num_steps={num_steps}, modulus={modulus}, ops={ops!r})"
        )
    rng = random.Random(seed)
    problems = []
    for _ in range(n):
        value = rng.randrange(modulus)
        question, steps = [str(value)], []
        for _ in range(num_steps):
            op, operand = rng.choice(ops), rng.randrange(modulus)
            result = _APPLY[op](value, operand) % modulus
            question += [op, str(operand)]
            steps.append(f"<<{value}{op}{operand}={result}>>")
            value = result
        params = {"num_steps": num_steps, "ops": ops, "modulus": modulus}
        problems.append(
            Problem(" ".join(question), steps, str(value), {"generator": "chain", "params": params})
        )
    return problems
