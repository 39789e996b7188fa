"""What a study ran on (machine, package versions, git commit), gathered for its report's "How this was run"."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import latentreason

PACKAGES = ("torch", "transformers", "accelerate")


def study_environment() -> dict:
    """{'machine': {...}, 'versions': {...}, 'git_commit': sha or None, 'git_uncommitted_changes': bool or None}."""
    source = Path(latentreason.__file__).resolve().parent
    commit = _git(source, "rev-parse", "HEAD")
    status = _git(source, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "machine": {
            "cpu": _cpu_model(),
            "cores": _physical_cores(),
            "threads": os.cpu_count(),
            "system": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in PACKAGES},
            "latentreason": latentreason.__version__,
        },
        "git_commit": commit,
        "git_uncommitted_changes": None if status is None else bool(status),
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(directory: Path, *args: str) -> str | None:
    """git's output in `directory`, or None outside a checkout or without git."""
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpuinfo() -> list[tuple[str, str]]:
    """(key, value) lines of /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return [(key.strip(), value.strip()) for key, sep, value in (line.partition(":") for line in lines) if sep]


def _cpu_model() -> str | None:
    models = [value for key, value in _cpuinfo() if key == "model name"]
    return models[0] if models else platform.processor() or None


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs of /proc/cpuinfo: hyper-threads share a core."""
    cores, package = set(), None
    for key, value in _cpuinfo():
        if key == "physical id":
            package = value
        elif key == "core id":
            cores.add((package, value))
    return len(cores) or None
