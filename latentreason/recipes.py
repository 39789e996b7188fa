"""The shipped recipes: YAML configs under latentreason/configs/, named on the command line by their file stem.

A recipe's `method:` says which command runs it: a training method for `latentreason train`, an RL
recipe (a key of RL_METHODS) for `latentreason rl`.
"""

from __future__ import annotations

from pathlib import Path

from latentreason.config import read_yaml
from latentreason.errors import UserError

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
# The `method:` of RL recipes, which `latentreason rl` runs -> the method of the SFT model each starts from.
RL_METHODS = {"atp-rl": "atp", "colar-rl": "colar", "cot-rl": "cot", "token-rl": "pretrained"}


def resolve_config_path(value: str | None) -> Path | None:
    """A file path, or the name of a shipped recipe (e.g. 'cot-tiny' -> latentreason/configs/cot-tiny.yaml)."""
    return None if value is None else resolve_shipped(value, SHIPPED_CONFIGS, "recipe")


def resolve_shipped(value: str, directory: Path, kind: str) -> Path:
    """`value` as a file path, else as the name of a YAML file shipped in `directory` (a `kind` of file)."""
    path = Path(value)
    if path.is_file():
        return path
    shipped = directory / f"{value}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in directory.glob("*.yaml"))
    shipped_hint = f"not a shipped {kind} ({', '.join(names)})" if names else f"no {kind}s are shipped"
    raise UserError(f"--config {value}: no such file, and {shipped_hint}")


def recipe_method(path: Path | None) -> str | None:
    """The recipe's `method:` (None without a recipe, or when it names none)."""
    return read_yaml(path).get("method") if path else None
