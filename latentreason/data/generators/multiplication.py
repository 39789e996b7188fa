"""Multi-digit multiplication in the iCoT long-multiplication format (Deng et al. 2023).

Every number is written digit by digit, space-separated, least significant digit first. The chain
of thought lists the partial products a*b_i (b_i = i-th digit of b, shifted by i places), each
zero-padded to len(a)+1+i digits, and after every partial product except the first and the last the
running sum in "( ... )", padded to the same width. The answer is padded to len(a)+len(b) digits.
This reproduces every record of the iCoT 4x4 and 5x5 validation files exactly.
"""

from __future__ import annotations

import random

from latentreason.data.problems import Problem
from latentreason.errors import ConfigError

NAME = "multiplication"


def digits(value: int, width: int) -> str:
    """`value` as `width` space-separated digits, least significant first (zero-padded)."""
    text = str(value)[::-1]
    if value < 0 or len(text) > width:
        raise ValueError(f"{value} does not fit in {width} digits")
    return " ".join(text.ljust(width, "0"))


def parse_digits(text: str) -> int:
    """Inverse of `digits`: '5 6 3 2' -> 2365."""
    return int("".join(reversed(text.split())))


def format_multiplication(a: int, b: int, a_digits: int, b_digits: int) -> tuple[str, list[str], str]:
    """(question, steps, answer) for a*b; steps joined by ' ' give the iCoT CoT string."""
    question = f"{digits(a, a_digits)} * {digits(b, b_digits)}"
    b_reversed = str(b)[::-1].ljust(b_digits, "0")
    steps: list[str] = []
    running = 0
    for i, b_digit in enumerate(b_reversed):
        width = a_digits + 1 + i
        partial = a * int(b_digit) * 10**i
        running += partial
        if i == 0:
            steps.append(digits(partial, width))
        elif i < b_digits - 1:
            # The running sum never needs more digits than the partial product it follows.
            steps.append(f"+ {digits(partial, width)} ( {digits(running, width)} )")
        else:
            steps.append(f"+ {digits(partial, width)}")
    return question, steps, digits(a * b, a_digits + b_digits)


def parse_question(question: str) -> tuple[int, int, int, int]:
    """'5 6 3 2 * 7 4 3 4' -> (a, b, a_digits, b_digits)."""
    left, right = question.split(" * ")
    return parse_digits(left), parse_digits(right), len(left.split()), len(right.split())


def generate_multiplication(
    n: int,
    seed: int = 0,
    num_digits: int = 4,
    a_digits: int | None = None,
    b_digits: int | None = None,
) -> list[Problem]:
    """`n` random a*b problems; both operands have a nonzero leading digit, as in the iCoT files.

    `num_digits` sets both operand lengths; `a_digits` / `b_digits` override one of them.
    """
    na = num_digits if a_digits is None else a_digits
    nb = num_digits if b_digits is None else b_digits
    for field, value in (("a_digits", na), ("b_digits", nb)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{NAME}: {field} must be a positive integer, got {value!r}")
    params = {"num_digits": num_digits, "a_digits": na, "b_digits": nb}
    rng = random.Random(seed)
    problems = []
    for index in range(n):
        a = rng.randint(10 ** (na - 1), 10**na - 1)
        b = rng.randint(10 ** (nb - 1), 10**nb - 1)
        question, steps, answer = format_multiplication(a, b, na, nb)
        meta = {
            "generator": NAME,
            "params": dict(params),
            "seed": seed,
            "index": index,
            "a": a,
            "b": b,
            "answer_value": a * b,
        }
        problems.append(Problem(question=question, steps=steps, answer=answer, meta=meta))
    return problems
