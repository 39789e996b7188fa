"""The package's parts import each other one way: no import cycle between its modules, nor between its
subpackages. Imports inside functions count: deferring an import hides a cycle from Python, not from a reader."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import latentreason

PACKAGE = Path(latentreason.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every absolute name the file imports anywhere (`from a import b` names both a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_graph(depth: int | None) -> dict[str, set[str]]:
    """Importer -> what it imports, both cut to their first `depth` name parts (2: latentreason.<part>)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def cut(name: str) -> str:
        return ".".join(name.split(".")[:depth])

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = {cut(other) for other in imported_names(path) if other in modules}
        graph.setdefault(cut(name), set()).update(imported - {cut(name)})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a] (depth-first search), or None."""
    finished: set[str] = set()

    def visit(path: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt in path:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in finished:
                cycle = visit(path + [nxt])
                if cycle:
                    return cycle
        finished.add(path[-1])
        return None

    for start in sorted(graph):
        cycle = None if start in finished else visit([start])
        if cycle:
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("depth", [None, 2], ids=["modules", "subpackages"])
def test_no_import_cycles(depth):
    cycle = find_cycle(import_graph(depth))
    assert cycle is None, " -> ".join(cycle)
