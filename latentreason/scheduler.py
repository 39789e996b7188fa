"""Run training jobs (the demo's rows, a study's runs) as processes, a few at a time, in an order their
dependencies allow.

A job starts once the job it starts from has finished; among the jobs that can start, the one heading
the longest chain of work still to do goes first (the demo's ATP-Latent before SIM-CoT, since
ATP-Latent's RL row waits for it). Every job gets the same thread count whatever runs beside it, so its
numbers do not depend on the schedule. One progress bar follows all of them: each job's share of the
expected work (its `seconds`) times the fraction of its optimizer steps done (read from its
log.jsonl), so the bar's rate, and with it the time left, accounts for jobs running side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from latentreason.errors import UserError

POLL_S = 1.0


@dataclass
class Job:
    name: str
    command: list[str]
    start: str | None  # the job that must finish first
    seconds: float  # expected duration (only ratios between jobs matter)
    total_steps: int
    log: Path  # the run's log.jsonl, whose last record holds the step reached
    output: Path  # where the process's stdout and stderr go
    process: subprocess.Popen | None = None
    began: float = 0.0
    done: bool = False
    failure: str | None = None  # why it failed or was not run (with keep_going)

    def steps_done(self) -> int:
        if self.done:
            return self.total_steps
        if not self.log.is_file():
            return 0
        lines = self.log.read_text().strip().splitlines()
        for line in reversed(lines):  # the last complete record (a line may be half written)
            try:
                return min(int(json.loads(line).get("step", 0)), self.total_steps)
            except (ValueError, TypeError):
                continue
        return 0


def chain_seconds(jobs: dict[str, Job]) -> dict[str, float]:
    """Each job's seconds plus the longest chain of jobs that start from it."""
    below: dict[str, float] = {}

    def length(name: str) -> float:
        if name not in below:
            children = [length(j.name) for j in jobs.values() if j.start == name]
            below[name] = jobs[name].seconds + max(children, default=0.0)
        return below[name]

    return {name: length(name) for name in jobs}


def run_jobs(jobs: list[Job], parallel: int, threads: int, keep_going: bool = False) -> dict[str, float]:
    """Run every job, `parallel` at a time with `threads` threads each; returns their wall times (s).

    A job that fails stops everything (UserError) unless `keep_going`: then it and the jobs that start from
    it are marked (`Job.failure`) and the others carry on."""
    by_name = {job.name: job for job in jobs}
    priority = chain_seconds(by_name)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    total = sum(job.seconds for job in jobs)
    timings: dict[str, float] = {}
    bar = tqdm(
        total=round(total),
        bar_format="{desc} |{bar}| {percentage:3.0f}%, {elapsed} elapsed, about {remaining} left",
        mininterval=0.5 if sys.stderr.isatty() else 30,  # a log file gets a line every 30 s, not every poll
    )
    try:
        while not all(job.done for job in jobs):
            for job in jobs:  # (keep_going) what starts from a failed job cannot run
                if job.process is None and not job.done and job.start and by_name[job.start].failure:
                    job.done, job.failure = True, f"{job.name} not run: {job.start} failed"
                    bar.write(f"  {job.failure}")
            running = [job for job in jobs if job.process is not None and not job.done]
            ready = [j for j in jobs if j.process is None and not j.done and (j.start is None or by_name[j.start].done)]
            for job in sorted(ready, key=lambda j: -priority[j.name])[: parallel - len(running)]:
                job.output.parent.mkdir(parents=True, exist_ok=True)
                with job.output.open("w") as sink:
                    job.process = subprocess.Popen(job.command, stdout=sink, stderr=subprocess.STDOUT, env=env)
                job.began = time.perf_counter()
                running.append(job)
            for job in running:
                code = job.process.poll()
                if code is None:
                    continue
                job.done = True
                if code != 0:
                    tail = job.output.read_text().strip().splitlines()[-1:] or ["(no output)"]
                    job.failure = f"{job.name} failed (exit status {code}): {tail[0]} (see {job.output})"
                    if not keep_going:
                        raise UserError(job.failure)
                    bar.write(f"  {job.failure}")
                    continue
                timings[job.name] = round(time.perf_counter() - job.began, 1)
                bar.write(f"  {job.name} trained in {timings[job.name]:.0f} s")
            done = sum(job.seconds * job.steps_done() / max(job.total_steps, 1) for job in jobs)
            now = [f"{j.name} {j.steps_done()}/{j.total_steps}" for j in jobs if j.process is not None and not j.done]
            bar.set_description_str("training " + (", ".join(now) if now else "done"), refresh=False)
            bar.update(min(round(done), bar.total) - bar.n)
            if not all(job.done for job in jobs):
                time.sleep(POLL_S)
    finally:
        bar.close()
        for job in jobs:  # a failure or Ctrl-C: stop what still runs
            if job.process is not None and job.process.poll() is None:
                job.process.terminate()
                job.process.wait()
    return timings


def schedule_seconds(jobs: list[Job], parallel: int) -> float:
    """How long `run_jobs` takes if every job takes its expected seconds (the same order of starts); jobs
    already done take none."""
    priority = chain_seconds({job.name: job for job in jobs})
    pending, running = [job for job in jobs if not job.done], []
    finished = {job.name for job in jobs if job.done}
    clock = 0.0
    while pending or running:
        ready = [job for job in pending if job.start is None or job.start in finished]
        for job in sorted(ready, key=lambda j: -priority[j.name])[: parallel - len(running)]:
            running.append((clock + job.seconds, job.name))
            pending.remove(job)
        clock, name = min(running)
        running.remove((clock, name))
        finished.add(name)
    return clock
