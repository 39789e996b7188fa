"""What every trainer writes besides checkpoints: the final model (atomically) and the metrics log."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Move the finished directory `tmp` to `final` so that a crash, even a power loss, leaves either the
    old `final`, or none, or the whole new one: every file and the directory reach the disk before the
    rename, and the rename reaches it before we return."""
    for path in sorted(tmp.rglob("*")):  # files, and subdirectories (their entries) too
        _fsync(path)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync(final.parent)


def save_final(lm, output_dir: Path, weights=None) -> Path:
    """Write `output_dir/final` through a temporary directory, so it is either complete or absent.
    `weights`: the model's whole weights when the live ones are sharded (see `LatentLM.save_pretrained`)."""
    final, tmp = output_dir / "final", output_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, state_dict=weights)
    publish(tmp, final)
    return final


def trim_log(log_path: Path, last_step: int) -> None:
    """Before a resumed run logs again: drop what the stopped run logged after its checkpoint (the resumed
    run logs those steps anew) and a line torn by the kill, so log.jsonl reads as one uninterrupted run."""
    if not log_path.is_file():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the kill cut this line short
        if record.get("step", 0) <= last_step:
            kept.append(line + "\n")
    tmp = log_path.with_name(log_path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, log_path)


def append_log(log_path: Path, metrics: dict) -> None:
    with log_path.open("a") as fh:
        fh.write(json.dumps(metrics) + "\n")
