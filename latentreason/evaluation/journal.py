"""The finished batches of an evaluation, appended to a file as they finish, so a killed run resumes.

A long evaluation (a pretrained model over the full GSM8K test set takes hours on a CPU) must not
start again from the first problem after an interruption. The journal's first line holds a key (the
model, the problems, every setting that changes an answer); each further line one solved batch: the
problems' positions, their records and the solver's seconds. A run with the same key reads the
solved problems back and solves only the others; a different key starts afresh. A half-written last
line (the process died while writing it) is ignored: its batch is solved again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from latentreason.data.problems import Problem


def journal_key(settings: dict, problems: list[Problem]) -> dict:
    """The settings plus a digest of the problems (questions and references, in order)."""
    digest = hashlib.sha256()
    for problem in problems:
        digest.update(json.dumps([problem.question, problem.answer]).encode())
    return {**settings, "problems": len(problems), "problems_sha256": digest.hexdigest()}


def model_fingerprint(model: str) -> dict:
    """What identifies a model's weights: for a local directory, each weight file's size and change time
    (a model retrained into the same directory is another model); otherwise its name."""
    path = Path(model)
    if not path.is_dir():
        return {"model": model}
    files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
    return {"model": str(path.resolve()), "weights": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


class Journal:
    def __init__(self, path: str | Path, key: dict):
        self.path = Path(path)
        self.key = json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)
        self.stale = False  # the file held another evaluation's progress, now discarded

    def solved(self) -> tuple[dict[int, dict], float]:
        """({problem position: record}, solver seconds spent on them) from a journal with this key."""
        if not self.path.is_file():
            return {}, 0.0
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("key") != self.key:
            self.stale = True
            return {}, 0.0
        records, seconds = {}, 0.0
        for line in lines[1:]:
            try:
                batch = json.loads(line)
                positions, batch_records, took = batch["positions"], batch["records"], float(batch["seconds"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short when the process died
            records.update(zip(positions, batch_records))
            seconds += took
        return records, seconds

    def start(self, keep: bool) -> None:
        """Open for appending; `keep`: the file holds this key's progress, else it is replaced."""
        if keep and self.path.is_file():
            text = self.path.read_bytes()
            if not text.endswith(b"\n"):  # cut the half-written line, or the next batch would join it
                with self.path.open("r+b") as sink:
                    sink.truncate(text.rfind(b"\n") + 1)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"key": self.key}) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, positions: list[int], records: list[dict], seconds: float) -> None:
        line = json.dumps({"positions": positions, "records": records, "seconds": seconds})
        with self.path.open("a", encoding="utf-8") as sink:
            sink.write(line + "\n")
            sink.flush()
            os.fsync(sink.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
