"""RunRecord: one finished (task, method, seed) run of a study, as the runner stores it and the report reads it."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from latentreason.errors import DataError


@dataclass
class RunRecord:
    task: str  # e.g. "prosqa"
    method: str  # the study's row name, e.g. "coconut", "coconut-no-curriculum"
    seed: int
    n: int  # evaluated problems
    accuracy: float
    latent_tokens: float  # mean continuous thoughts per problem
    text_tokens: float  # mean explicit reasoning tokens per problem
    correct: list[bool]  # per evaluated problem, in the task's evaluation order (same problems for every method)
    steps: int  # optimizer steps trained
    train_seconds: float
    eval_seconds: float
    command: str  # the exact shell command that trained the run
    model_dir: str  # where its final model is
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, validation accuracy) logged in training

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> RunRecord:
        """Parse and check a stored record; `where` (e.g. its path) names it in the error on bad input."""
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(where, None, f"not valid JSON ({err})") from None
        if not isinstance(payload, dict):
            raise DataError(where, None, f"expected a JSON object, got {type(payload).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(payload) - set(names))
        if unknown:
            raise DataError(where, unknown[0], f"unknown field; a run record has {', '.join(names)}")
        values = {}
        for name in names:
            if name not in payload:
                if name == "curve":
                    continue  # optional: runs that logged no validation accuracy
                raise DataError(where, name, "missing")
            try:
                values[name] = _CHECKS[name](payload[name])
            except ValueError as err:
                raise DataError(where, name, str(err)) from None
        record = cls(**values)
        if len(record.correct) != record.n:
            raise DataError(where, "correct", f"has {len(record.correct)} entries, expected n = {record.n}")
        solved = sum(record.correct) / record.n
        if not math.isclose(record.accuracy, solved, abs_tol=1e-6):
            raise DataError(where, "accuracy", f"is {record.accuracy}, but 'correct' gives {solved}")
        return record


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_shown(value)}")
    return value


def _whole(minimum: int | None) -> Callable[[object], int]:
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            expected = "a whole number" if minimum is None else f"a whole number >= {minimum}"
            raise ValueError(f"expected {expected}, got {_shown(value)}")
        return value

    return check


def _number(low: float, high: float = math.inf) -> Callable[[object], float]:
    def check(value) -> float:
        numeric = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or not low <= value <= high:
            bounds = f"between {low:g} and {high:g}" if high < math.inf else f">= {low:g}"
            raise ValueError(f"expected a number {bounds}, got {_shown(value)}")
        return float(value)

    return check


def _flags(value) -> list[bool]:
    if not isinstance(value, list) or not all(isinstance(flag, bool) for flag in value):
        raise ValueError(f"expected a list of true/false, one per problem, got {_shown(value)}")
    return value


def _curve(value) -> list[tuple[int, float]]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of [step, validation accuracy] pairs, got {_shown(value)}")
    step, accuracy = _whole(0), _number(0.0, 1.0)
    points = []
    for i, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            raise ValueError(f"entry {i}: expected [step, validation accuracy], got {_shown(point)}")
        try:
            points.append((step(point[0]), accuracy(point[1])))
        except ValueError as err:
            raise ValueError(f"entry {i}: {err}") from None
    return points


_CHECKS: dict[str, Callable[[object], object]] = {
    "task": _text,
    "method": _text,
    "seed": _whole(None),
    "n": _whole(1),
    "accuracy": _number(0.0, 1.0),
    "latent_tokens": _number(0.0),
    "text_tokens": _number(0.0),
    "correct": _flags,
    "steps": _whole(0),
    "train_seconds": _number(0.0),
    "eval_seconds": _number(0.0),
    "command": _text,
    "model_dir": _text,
    "curve": _curve,
}
