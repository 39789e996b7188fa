"""A study's YAML: tasks x rows x seeds, each run a shipped recipe with the study's fields on top.

    name: coconut-tasks
    question: Does the published ordering hold at this scale?
    seeds: [0, 1, 2]
    fields: {tiny_model: {...}}               # every run
    tasks:
      prosqa:
        fields: {dataset: "synthetic:prosqa", num_train_examples: 8000, max_new_tokens: 96}
        evaluate: {benchmark: prosqa, split: valid}
        rows: {coconut: {c_thought: 1}}       # this task's fields for one row
    rows:
      cot: {recipe: cot-tiny}
      coconut: {recipe: coconut-tiny, start: cot, fields: {max_latent_stage: 6}}
    published: {prosqa: {cot: [77.5, 49.4]}}  # the paper's accuracy (%) and reasoning tokens
    profiles: {default: {...}, quick: {...}, full: {...}}
                                  # merged over the rest: 'default' without --quick / --full, the others with
                                  # them; in them `tasks: {prosqa: null}` drops a task (or row)

A run's fields, later ones winning: the recipe file, the study's `fields`, the row's `fields`, the
task's `fields`, the task's `rows` entry, the study's `force` (for profiles that must override
everything, e.g. --quick's step counts), then what the runner sets (seed, output_dir, the model it
starts from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentreason.config import from_dict, read_yaml
from latentreason.errors import ConfigError, UserError
from latentreason.recipes import resolve_shipped

SHIPPED_STUDIES = Path(__file__).parent.parent / "configs" / "studies"
PROFILES = ("default", "quick", "full")


@dataclass
class TaskSpec:
    evaluate: dict[str, Any]  # {benchmark: NAME, split: SPLIT} or {file: PATH relative to the study}; optional limit
    fields: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, Any] = field(default_factory=dict)  # row -> {field: value} for this task only


@dataclass
class RowSpec:
    recipe: str  # a shipped recipe name (latentreason/configs/<recipe>.yaml) or a YAML path
    start: str | None = None  # the row whose final model this one starts from (same task and seed)
    fields: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # how the report names it (default: the row's name)


@dataclass
class StudyConfig:
    name: str
    tasks: dict[str, TaskSpec]
    rows: dict[str, RowSpec]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    question: str = ""
    description: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    force: dict[str, Any] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file it came from, and the profile


def study_path(value: str) -> Path:
    """A YAML path, or the name of a shipped study (latentreason/configs/studies/<name>.yaml)."""
    return resolve_shipped(value, SHIPPED_STUDIES, "study")


def merged(base: dict, over: dict) -> dict:
    """`over` merged into `base`: mappings key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def load_study(value: str, profile: str | None = None) -> StudyConfig:
    """The study named or stored at `value`, with `profile` ('quick', 'full', or None for its 'default'
    profile if it has one) merged over it."""
    path = study_path(value)
    raw = read_yaml(path)
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict) or set(profiles) - set(PROFILES):
        raise ConfigError(f"{path}: 'profiles' must be a mapping with keys among {', '.join(PROFILES)}")
    if profile is None and "default" in profiles:
        profile = "default"
    if profile is not None:
        if profile not in profiles:
            raise UserError(f"--{profile}: {path} has no '{profile}' profile")
        raw = merged(raw, profiles[profile])
    where = f"{path}" + (f" (profile {profile})" if profile else "")
    _drop_nulls(raw)
    for key in ("tasks", "rows"):
        if not isinstance(raw.get(key), dict) or not raw[key]:
            raise ConfigError(f"{where}: '{key}' must be a non-empty mapping of name: settings")
    raw["tasks"] = {name: _spec(TaskSpec, value, where, f"tasks.{name}") for name, value in raw["tasks"].items()}
    raw["rows"] = {name: _spec(RowSpec, value, where, f"rows.{name}") for name, value in raw["rows"].items()}
    study = from_dict(StudyConfig, {**raw, "source": where}, where)
    _check(study, where)
    for task in study.tasks.values():  # a file the study evaluates on sits beside it (or is absolute)
        if "file" in task.evaluate:
            task.evaluate["file"] = str(path.parent / task.evaluate["file"])
    return study


def _spec(cls, value: Any, where: str, key: str):
    if not isinstance(value, dict):
        raise ConfigError(f"{where}, {key}: expected a mapping, got {value!r}")
    return from_dict(cls, value, f"{where}, {key}")


def _drop_nulls(raw: dict) -> None:
    """A profile's `name: null` under `tasks` or `rows` drops that task or row (and the tasks' fields for
    a dropped row), so a profile can run a slice of the study. Malformed sections are left to the checks."""
    dropped_rows = set()
    for key in ("tasks", "rows"):
        if isinstance(raw.get(key), dict):
            if key == "rows":
                dropped_rows = {name for name, value in raw[key].items() if value is None}
            raw[key] = {name: value for name, value in raw[key].items() if value is not None}
    for task in raw["tasks"].values() if isinstance(raw.get("tasks"), dict) else ():
        if dropped_rows and isinstance(task, dict) and isinstance(task.get("rows"), dict):
            task["rows"] = {row: value for row, value in task["rows"].items() if row not in dropped_rows}


def _check(study: StudyConfig, where: str) -> None:
    """What the types alone do not say: rows start from rows that exist, without cycles; tasks name
    their evaluation data; seeds are distinct."""
    for name, row in study.rows.items():
        seen, current = {name}, row.start
        while current is not None:
            if current not in study.rows:
                raise ConfigError(f"{where}, rows.{name}: starts from '{current}', which is not a row")
            if current in seen:
                raise ConfigError(f"{where}, rows.{name}: its 'start' rows form a cycle")
            seen.add(current)
            current = study.rows[current].start
    for name, task in study.tasks.items():
        keys = set(task.evaluate)
        if not ({"benchmark"} <= keys <= {"benchmark", "split", "limit"} or {"file"} <= keys <= {"file", "limit"}):
            raise ConfigError(
                f"{where}, tasks.{name}.evaluate: expected {{benchmark: NAME, split: SPLIT}} or {{file: PATH}} "
                f"(and optionally limit), got {task.evaluate}"
            )
        unknown = set(task.rows) - set(study.rows)
        if unknown:
            raise ConfigError(f"{where}, tasks.{name}.rows: {', '.join(sorted(unknown))} not among the study's rows")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds) or not all(type(s) is int for s in study.seeds):
        raise ConfigError(f"{where}, seeds: expected distinct seeds, got {study.seeds}")
