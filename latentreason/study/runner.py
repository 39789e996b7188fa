"""`latentreason study`: run every (task, row, seed) of a study, a few at a time, then write its report.

A run whose record.json exists is finished and reused; the others start (or resume: see study/plan.py)
in an order their `start` rows allow, each in its own process with the same thread count. The report
is written from every finished run, so a study stopped half way still reports what it has and says
which seeds are missing.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from latentreason.errors import UserError
from latentreason.scheduler import Job, run_jobs
from latentreason.study.config import StudyConfig
from latentreason.study.environment import study_environment
from latentreason.study.execute import RECORD
from latentreason.study.plan import Run, plan_runs
from latentreason.study.records import RunRecord
from latentreason.study.report import write_study_report


def select(runs: list[Run], tasks: list[str] | None, rows: list[str] | None) -> list[Run]:
    """The runs of the chosen tasks and rows, plus the runs they start from."""
    by_key = {run.key: run for run in runs}
    for names, kind, known in ((tasks, "tasks", {r.task for r in runs}), (rows, "rows", {r.row for r in runs})):
        unknown = sorted(set(names or []) - known)
        if unknown:
            raise UserError(
                f"--{kind}: unknown {', '.join(unknown)}; the study's {kind} are {', '.join(sorted(known))}"
            )
    wanted = set()
    for run in runs:
        if (tasks and run.task not in tasks) or (rows and run.row not in rows):
            continue
        key = run.key
        while key is not None and key not in wanted:
            wanted.add(key)
            key = by_key[key].start
    return [run for run in runs if run.key in wanted]


def check_unchanged(runs: list[Run]) -> None:
    """Refuse to reuse or resume a run whose commands the study no longer gives: its checkpoints and results
    belong to other settings. (Where the benchmarks are read from, --data-dir, may change.)"""
    changed = []
    for run in runs:
        saved = Path(run.dir) / "run.json"
        if saved.is_file():
            before = json.loads(saved.read_text(encoding="utf-8"))
            if before.get("train") != run.train or _without_data_dir(before.get("eval", [])) != _without_data_dir(
                run.eval
            ):
                changed.append(run)
    if changed:
        shown = ", ".join(run.key for run in changed[:3]) + (
            f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        )
        raise UserError(
            f"the study's settings changed since {shown} ran ({Path(changed[0].dir) / 'run.json'} holds the "
            "commands it ran with): delete those run directories to run them again, or give another --output-dir"
        )


def _without_data_dir(argv: list[str]) -> list[str]:
    out = list(argv)
    if "--data-dir" in out:
        at = out.index("--data-dir")
        del out[at : at + 2]
    return out


def run_study(
    study: StudyConfig,
    output_dir: Path,
    report_name: str,
    report_dir: Path,
    data_dir: str | None = None,
    jobs: int = 2,
    tasks: list[str] | None = None,
    rows: list[str] | None = None,
    train: bool = True,
    launcher: tuple[str, ...] = (),
    threads: int | None = None,
    keep_going: bool = False,
) -> tuple[dict[str, Path], list[str]]:
    """Run what is unfinished (unless `train` is False), then write the report; returns its paths and the
    failures of runs that did not finish (`keep_going`: a failed run stops only the runs that start from it).
    `threads`: per run (default: the cores shared among the `jobs` runs)."""
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads: must be at least 1, got {threads}")
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    began = time.time()
    runs = select(plan_runs(study, output_dir, data_dir, launcher), tasks, rows)
    check_unchanged(runs)
    failures: list[str] = []
    if train:
        with exclusive(output_dir):
            finished = {run.key for run in runs if (Path(run.dir) / RECORD).is_file()}
            pending = [run for run in runs if run.key not in finished]
            print(
                f"study {report_name}: {len(runs)} runs ({len(study.tasks)} tasks x {len(study.rows)} rows x "
                f"{len(study.seeds)} seeds{', a selection' if tasks or rows else ''}); {len(finished)} finished "
                f"earlier and reused, {len(pending)} to run, {jobs} at a time with {threads} thread(s) each; logs in "
                f"{output_dir / 'logs'}"
            )
            failures = run_pending(pending, finished, output_dir, jobs, threads, keep_going)
    meta = {
        "study": asdict(study),
        "output_dir": str(output_dir),
        "jobs": jobs,
        "threads_per_run": threads,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(began)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "eval_commands": {run.key: run.command("eval") for run in runs},
        **study_environment(),
    }
    return report(study, runs, output_dir, report_name, report_dir, meta), failures


@contextmanager
def exclusive(output_dir: Path):
    """Hold output_dir/study.lock while runs start: two invocations would start the same runs twice."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / "study.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "unknown"
            raise UserError(f"{output_dir}: another `latentreason study` is running on it (pid {owner})") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def run_pending(
    pending: list[Run], finished: set[str], output_dir: Path, jobs: int, threads: int, keep_going: bool
) -> list[str]:
    """Start the pending runs; returns why each failed one failed (only with keep_going, else it raises)."""
    for run in pending:
        run.save()
    work = [
        Job(
            name=run.key,
            command=run.argv(),
            start=None if run.start in finished else run.start,
            seconds=float(run.steps),
            total_steps=run.steps,
            log=Path(run.dir) / "log.jsonl",
            output=output_dir / "logs" / f"{run.key.replace('/', '__')}.txt",
        )
        for run in pending
    ]
    if work:
        run_jobs(work, jobs, threads, keep_going)
    return [job.failure for job in work if job.failure]


def report(
    study: StudyConfig, runs: list[Run], output_dir: Path, report_name: str, report_dir: Path, meta: dict
) -> dict[str, Path]:
    """The report of every finished run among `runs`."""
    records = [
        RunRecord.from_json((Path(run.dir) / RECORD).read_text(encoding="utf-8"), str(Path(run.dir) / RECORD))
        for run in runs
        if (Path(run.dir) / RECORD).is_file()
    ]
    if not records:
        raise UserError(f"study {report_name}: no finished runs in {output_dir} to report")
    published = {task: {row: tuple(v) for row, v in rows_.items()} for task, rows_ in study.published.items()}
    expected = [(run.task, run.row, run.seed) for run in runs]
    preface = question_and_answer(study, report_dir / f"{report_name}.answer.md")
    return write_study_report(
        report_name, records, report_dir, meta, published=published, expected=expected, preface=preface
    )


def question_and_answer(study: StudyConfig, answer: Path) -> str:
    """The study's question and, from `answer` (written by hand once the runs are read), what was found."""
    if not study.question:
        return ""
    found = answer.read_text(encoding="utf-8").strip() if answer.is_file() else f"(not written yet: {answer})"
    return f"**The question.** {study.question}\n\n**What we found.** {found}"
