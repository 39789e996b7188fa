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
    n: int, seed: int = 0, num_steps: int = 3, ops: str = "+-*", modulus: int = 10, min_steps: int | None = None
) -> list[Problem]:
    """`n` chains of operations drawn from `ops`, values modulo `modulus`.

    Each chain has `num_steps` operations, or a uniform draw from [min_steps, num_steps] when
    `min_steps` is set (short chains teach the single-step facts quickly).
    """
    low = num_steps if min_steps is None else min_steps
    if not 1 <= low <= num_steps or modulus < 2 or not ops or set(ops) - set(_APPLY):
        raise ConfigError(
            f"chain task: need 1 <= min_steps <= num_steps, modulus >= 2 and ops drawn from '+-*' "
            f"(got min_steps={min_steps}, num_steps={num_steps}, modulus={modulus}, ops={ops!r})"
        )
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        value = rng.randrange(modulus)
        question, steps = [str(value)], []
        for _ in range(rng.randint(low, num_steps) if low < num_steps else num_steps):
            op, operand = rng.choice(ops), rng.randrange(modulus)
            result = _APPLY[op](value, operand) % modulus
            question += [op, str(operand)]
            steps.append(f"<<{value}{op}{operand}={result}>>")
            value = result
        params = {"num_steps": num_steps, "min_steps": min_steps, "ops": ops, "modulus": modulus}
        meta = {"generator": "chain", "params": params, "seed": seed, "index": index}
        problems.append(Problem(" ".join(question), steps, str(value), meta))
    return problems
