"""Where a run's problems come from: a synthetic generator, a benchmark split, or a file."""

from __future__ import annotations

from pathlib import Path

from latentreason.data.problems import Problem

SYNTHETIC = "synthetic:"
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
    if Path(dataset).suffix and Path(dataset).exists():
        from latentreason.data.formats import load_file

        problems = load_file(dataset, on_invalid=on_invalid)
    else:
        from latentreason.data.registry import load_benchmark

        problems = load_benchmark(dataset, split=split, data_dir=data_dir, on_invalid=on_invalid)
    return problems[:limit] if limit > 0 else problems


def held_out_from(train: list[Problem], candidates: list[Problem]) -> list[Problem]:
    """Drop candidates whose question also occurs in the training set."""
    seen = {p.question for p in train}
    return [p for p in candidates if p.question not in seen]


def load_train_and_held_out(config) -> tuple[list[Problem], list[Problem]]:
    """Training problems and held-out problems for evaluation during training (never the test split)."""
    train = load_problems(
        config.dataset,
        config.train_split,
        config.data_dir,
        config.dataset_params,
        config.num_train_examples,
        config.seed,
        config.on_invalid,
    )
    held_out = []
    if config.num_eval_examples > 0:
        held_out = load_problems(
            config.dataset,
            config.eval_split,
            config.data_dir,
            config.dataset_params,
            config.num_eval_examples,
            config.seed,
            config.on_invalid,
        )
        if config.dataset.startswith(SYNTHETIC):
            held_out = held_out_from(train, held_out)
    return train, held_out
