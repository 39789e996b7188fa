"""Where a run's problems come from: a synthetic generator, a benchmark split, or a file."""

from __future__ import annotations

from pathlib import Path

from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.processes import say

SYNTHETIC = "synthetic:"
DEFAULT_EVAL_SPLIT = "valid"  # the split evaluated during training unless the config names another
# Each split of a generated task draws from its own seed stream.
_SPLIT_SEED_OFFSET = {"train": 0, "valid": 1_000_003, "test": 2_000_006}


def load_problems(
    dataset: str,
    split: str,
    data_dir: str | None = None,
    params: dict | None = None,
    limit: int = 0,
    seed: int = 0,
    on_invalid: str = "error",
) -> list[Problem]:
    """Problems of `dataset` ('synthetic:NAME', a benchmark name, or a file path); `limit` 0 = all.

    on_invalid: 'error' or 'skip' for malformed records of a file or benchmark.
    """
    if dataset.startswith(SYNTHETIC):
        from latentreason.data.generators import generate

        if limit <= 0:
            raise ValueError("a synthetic dataset needs a positive number of examples")
        return generate(
            dataset[len(SYNTHETIC) :], limit, seed + _SPLIT_SEED_OFFSET.get(split, 3_000_009), **(params or {})
        )
    if is_data_file(dataset):
        from latentreason.data.formats import load_file

        problems = load_file(dataset, on_invalid=on_invalid)
    else:
        from latentreason.data.registry import load_benchmark

        problems = load_benchmark(dataset, split=split, data_dir=data_dir, on_invalid=on_invalid)
    return problems[:limit] if limit > 0 else problems


def is_data_file(dataset: str) -> bool:
    """Is `dataset` a path to a data file (rather than a benchmark name or a generator)?"""
    return bool(Path(dataset).suffix) and Path(dataset).exists()


def held_out_from(train: list[Problem], candidates: list[Problem]) -> list[Problem]:
    """Drop candidates whose question also occurs in the training set."""
    seen = {p.question for p in train}
    return [p for p in candidates if p.question not in seen]


def load_train_and_held_out(config) -> tuple[list[Problem], list[Problem]]:
    """Training problems and held-out problems for evaluation during training (never the test split).

    When the held-out problems would otherwise be training problems (a data file, which has no splits, a benchmark
    without the default 'valid' split such as GSM8K, or eval_split equal to train_split), the last
    `num_eval_examples` problems of the training data are held out and not trained on, and a line says so.
    """

    def load(split: str, limit: int) -> list[Problem]:
        return load_problems(
            config.dataset, split, config.data_dir, config.dataset_params, limit, config.seed, config.on_invalid
        )

    held = config.num_eval_examples
    if held > 0 and _held_out_from_training(config):
        pool = load(config.train_split, 0)
        if len(pool) <= held:
            raise UserError(
                f"{config.dataset}: {len(pool)} problems, too few to hold out num_eval_examples={held} of them "
                "and train on the rest; lower num_eval_examples (0 evaluates nothing during training)"
            )
        train, held_out = pool[:-held], pool[-held:]
        if config.num_train_examples > 0:
            train = train[: config.num_train_examples]
        say(
            f"{config.dataset} has no separate held-out split here: its last {held} {config.train_split} problems "
            f"are held out for evaluation during training and not trained on ({len(train)} left to train on)"
        )
        return _never_trained_on(config, train), held_out
    train = _never_trained_on(config, load(config.train_split, config.num_train_examples))
    held_out = load(config.eval_split, held) if held > 0 else []
    if config.dataset.startswith(SYNTHETIC):
        held_out = held_out_from(train, held_out)
    return train, held_out


def questions_of(spec: str, data_dir: str | None = None) -> set[str]:
    """The questions of `spec`: a data file, or a benchmark as NAME (its evaluation split, as
    `latentreason eval` reads it) or NAME:SPLIT."""
    if is_data_file(spec):
        return {p.question for p in load_problems(spec, "", data_dir)}
    if Path(spec).suffix and ":" not in spec:
        raise UserError(f"never_train_on: no such file: {spec}")
    from latentreason.data.registry import load_benchmark

    name, _, split = spec.partition(":")
    return {p.question for p in load_benchmark(name, split or None, data_dir)}


def _never_trained_on(config, train: list[Problem]) -> list[Problem]:
    """`train` without the problems of `config.never_train_on` (the set a study evaluates on): on a generated
    task with a small problem space (3x3 multiplication has 810,000) a random draw would otherwise repeat some."""
    if not config.never_train_on:
        return train
    excluded = questions_of(config.never_train_on, config.data_dir)
    kept = [p for p in train if p.question not in excluded]
    say(
        f"never_train_on {config.never_train_on}: {len(train) - len(kept)} of {len(train)} training problems "
        f"are among its {len(excluded)} questions and were dropped"
    )
    return kept


def _held_out_from_training(config) -> bool:
    """Would `eval_split` read the training problems themselves? (A generator draws each split from its own
    seed stream; a misspelt split of a benchmark that has a 'valid' one is left to raise.)"""
    if config.dataset.startswith(SYNTHETIC):
        return False
    if is_data_file(config.dataset):
        return True  # a file is one pool of problems, whatever the split
    if config.eval_split == config.train_split:
        return True
    from latentreason.data.registry import get_benchmark

    return config.eval_split == DEFAULT_EVAL_SPLIT and DEFAULT_EVAL_SPLIT not in get_benchmark(config.dataset).splits
