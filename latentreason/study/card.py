"""A Hugging Face style README.md for one model a study trained: its data, method, training and how to evaluate it."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from latentreason.errors import UserError
from latentreason.evaluation.report import atomic_write_text


def write_model_card(
    model_dir: str | Path,
    *,
    task: str,
    method: str,
    seed: int,
    steps: int,
    validation_accuracy: float,
    data: dict[str, str],
    command: str,
    study: str,
) -> Path:
    """Write `<model_dir>/README.md`; returns its path.

    `data`: split -> what it is, a file or a description ({'train': '9,000 generated graphs', 'test':
    'data/prosqa/test.json'}); the 'test' entry goes into the evaluation command.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        raise UserError(f"model card: {directory} is not a directory (expected a trained model's directory)")
    summary = f"A tiny {method} model for {task}, trained with latentreason in the study {study} (seed {seed})."
    front = {
        "library_name": "latentreason",
        "tags": ["latent-reasoning", method],
        "datasets": [task],
        "description": summary,
    }
    test_file = data.get("test", "<test file>")
    evaluate = f"latentreason eval --model {shlex.quote(str(directory))} --file {shlex.quote(test_file)}"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {method} on {task}, seed {seed}",
        "",
        summary + f" Its row in the study's report: `docs/results/{study}.md`.",
        "",
        "## Data",
        "",
        *(f"- {split}: {what}" for split, what in data.items()),
        "",
        "## Training",
        "",
        f"- method: `{method}` (see docs/methods.md)",
        f"- optimizer steps: {steps}",
        f"- seed: {seed}",
        f"- validation accuracy at the end of training: {validation_accuracy:.1%}",
        "",
        "It was trained with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Evaluate it",
        "",
        "```bash",
        f"{evaluate} --output-dir eval-{method}-{task}",
        "```",
        "",
    ]
    path = directory / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path
