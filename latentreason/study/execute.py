"""One study run in its own process: train (or resume), evaluate (or resume), then record the result.

    python -m latentreason.study.execute <run dir>/run.json

Each step runs the exact `latentreason` command the plan wrote, as its own process (through the
run's launcher for training on several devices), and is skipped when its output is already complete,
so re-running a killed run finishes it. The result goes to record.json (a RunRecord) last, written
atomically: its presence marks a finished run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from latentreason.evaluation.report import atomic_write_text
from latentreason.study.card import write_model_card
from latentreason.study.plan import Run
from latentreason.study.records import RunRecord

RECORD = "record.json"
TIMES = "seconds.json"


def execute(run: Run) -> RunRecord:
    run_dir = Path(run.dir)
    times = run_dir / TIMES  # each step's seconds, kept when a later sitting finishes the run
    seconds = json.loads(times.read_text(encoding="utf-8")) if times.is_file() else {"train": 0.0, "eval": 0.0}
    for step, done in (("train", run_dir / "final"), ("eval", run_dir / "eval" / "results.json")):
        if done.exists():
            continue
        began = time.perf_counter()
        launcher = run.launcher if step == "train" and run.launcher else (sys.executable,)
        argv = run.train if step == "train" else run.eval
        code = subprocess.run([*launcher, "-m", "latentreason.cli", *argv], check=False).returncode
        if code:
            raise SystemExit(f"{run.key}: `{run.command(step)}` failed with exit status {code}")
        seconds[step] = time.perf_counter() - began  # the sitting that finished it (a resumed one: its last)
        atomic_write_text(times, json.dumps(seconds))
    record = collect(run, seconds)
    write_model_card(
        run_dir / "final",
        task=run.task,
        method=run.row,
        seed=run.seed,
        steps=record.steps,
        validation_accuracy=record.accuracy,
        data=run.data,
        command=record.command,
        study=run.study,
    )
    atomic_write_text(run_dir / RECORD, record.to_json())
    return record


def collect(run: Run, seconds: dict[str, float]) -> RunRecord:
    """The run's RunRecord from what its steps wrote: eval/results.json and predictions.jsonl, log.jsonl."""
    run_dir = Path(run.dir)
    [result] = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))["results"]
    predictions = (run_dir / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    curve, steps = [], 0
    for line in (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        steps = max(steps, int(entry.get("step", 0)))
        if "eval_accuracy" in entry:
            curve.append((int(entry["step"]), float(entry["eval_accuracy"])))
    return RunRecord(
        task=run.task,
        method=run.row,
        seed=run.seed,
        n=result["n"],
        accuracy=result["accuracy"],
        latent_tokens=result["latent_tokens"],
        text_tokens=result["text_tokens"],
        correct=[bool(json.loads(line)["correct"]) for line in predictions],
        steps=steps,
        train_seconds=round(seconds["train"], 1),
        eval_seconds=round(seconds["eval"], 1),
        command=run.command("train"),
        model_dir=str(run_dir / "final"),
        curve=curve,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m latentreason.study.execute <run dir>/run.json", file=sys.stderr)
        return 2
    fields = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    run = Run(**{**fields, "launcher": tuple(fields.get("launcher", ()))})
    record = execute(run)
    print(f"{run.key}: accuracy {record.accuracy:.1%} on {record.n} problems")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
