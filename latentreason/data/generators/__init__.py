"""Generators of unlimited training data; each output is a pure function of (n, seed, params).

    generate("multiplication", 1000, seed=0, num_digits=5)
    generate("prosqa", 1000, seed=0)
    generate("prontoqa", 1000, seed=0)  # Coconut's 5-hop ProntoQA
    generate("arithmetic", 1000, seed=0, max_steps=5)
    generate("chain", 1000, seed=0, num_steps=3)  # the demo task

The first k problems of a call do not depend on n, so a larger n extends a smaller one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from latentreason.data.generators.arithmetic import generate_arithmetic
from latentreason.data.generators.chain import generate_chain
from latentreason.data.generators.multiplication import generate_multiplication
from latentreason.data.generators.prontoqa import generate_prontoqa
from latentreason.data.generators.prosqa import generate_prosqa
from latentreason.data.problems import Problem
from latentreason.errors import ConfigError

GENERATORS: dict[str, Callable[..., list[Problem]]] = {
    "multiplication": generate_multiplication,
    "prosqa": generate_prosqa,
    "prontoqa": generate_prontoqa,
    "arithmetic": generate_arithmetic,
    "chain": generate_chain,
}


def generate(name: str, n: int, seed: int = 0, **params) -> list[Problem]:
    """`n` problems from the generator `name`; unknown names or parameters raise ConfigError."""
    if name not in GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; choose one of {sorted(GENERATORS)}")
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"{name}: n must be a non-negative integer, got {n!r}")
    function = GENERATORS[name]
    accepted = [p for p in inspect.signature(function).parameters if p not in ("n", "seed")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {unknown}; accepted: {accepted}")
    return function(n, seed=seed, **params)


__all__ = [
    "GENERATORS",
    "generate",
    "generate_arithmetic",
    "generate_chain",
    "generate_multiplication",
    "generate_prontoqa",
    "generate_prosqa",
]
