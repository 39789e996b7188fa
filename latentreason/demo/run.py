"""`latentreason demo`: train and compare methods on a generated task, offline, on a CPU.

Task: chains of single-digit operations modulo 10 ('7 + 5 - 3 * 8' -> '<<7+5=2>> <<2-3=9>> <<9*8=2>>
### 2'). Training mixes 1- to 3-step chains; the test set holds 3-step chains whose questions never
occur in training. Each row trains with its shipped recipe in its own process (demo/plan.py), a few
rows side by side (demo/scheduler.py); then every row is evaluated here on the same test problems.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from latentreason.config import to_dict
from latentreason.data.formats import write_coconut
from latentreason.data.sources import held_out_from, load_problems
from latentreason.demo import plan
from latentreason.demo.summary import seed_summary, summary_table, write_summary
from latentreason.errors import UserError
from latentreason.evaluation.harness import evaluate
from latentreason.evaluation.report import markdown_table, write_report
from latentreason.methods.saved import method_for
from latentreason.model.latent_lm import LatentLM
from latentreason.scheduler import Job, run_jobs, schedule_seconds

HELD_OUT_FILE = "held_out.json"  # the table's test problems, Coconut JSON
PLAN_FILE = "demo.json"  # what the demo in a directory trains, so that --resume continues only that demo


def run_demo(
    output_dir: str | Path = "demo_output",
    quick: bool = False,
    overwrite: bool = False,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    jobs: int = 2,
    resume: bool = False,
) -> dict[int | None, list]:
    """Train CoT-SFT, No-CoT and latent methods on a generated task and compare them on held-out problems.

    `rows`: None for the default rows, ['all'] for the whole table. `seeds` replace every recipe's seed:
    another draw of the problems, the initialisation and the data order. With several, each seed's table
    goes to `seed-<S>/` and summary.md gives every row's mean, standard deviation and range over them.
    `jobs`: rows trained at the same time; each gets cores // jobs threads (at least one).
    `resume`: continue the same demo in `output_dir`: rows whose final model is saved are reused, the others
    train again from their start (a row saves no checkpoint before its end).
    Returns {seed: results} (seed None: the recipes' own).
    """
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    if resume and overwrite:
        raise UserError("--resume continues the demo in --output-dir and --overwrite replaces it: pass one of them")
    selected = plan.select_rows(rows)
    out = Path(output_dir)
    several = bool(seeds) and len(seeds) > 1
    tables = {seed: out / f"seed-{seed}" for seed in seeds} if several else {(seeds[0] if seeds else None): out}
    demo_plan = {"quick": quick, "seeds": seeds or [], "rows": selected}
    demo_plan["recipes"] = {  # bad settings fail here, not mid-run; paths relative to `out`, however it is spelt
        str(dir_.relative_to(out)): {
            row: to_dict(plan.row_config(row, dir_.relative_to(out), quick, seed)) for row in selected
        }
        for seed, dir_ in tables.items()
    }
    demo_plan = json.loads(json.dumps(demo_plan))  # as it reads back from PLAN_FILE (tuples become lists)
    if out.exists() and any(out.iterdir()):
        if resume:
            check_same_demo(out, demo_plan)
        elif overwrite:
            shutil.rmtree(out)
        else:
            raise UserError(
                f"{out} is not empty; pass --resume to continue the demo in it, --overwrite to replace it, "
                "or choose another --output-dir"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / PLAN_FILE).write_text(json.dumps(demo_plan, indent=1))
    if not several:
        [seed] = tables
        return {seed: run_table(out, quick, selected, seed, jobs)}
    per_seed = {}
    for seed, table_dir in tables.items():
        print(f"\n=== seed {seed} ({len(per_seed) + 1} of {len(seeds)}) ===")
        per_seed[seed] = run_table(table_dir, quick, selected, seed, jobs)
    summary = seed_summary(per_seed)
    paths = write_summary(summary, out, {"seeds": seeds, "quick": quick, "jobs": jobs})
    print(f"\nover seeds {', '.join(map(str, seeds))}:\n{summary_table(summary)}\n\nsummary: {paths['markdown']}")
    return per_seed


def check_same_demo(out: Path, demo_plan: dict) -> None:
    """Refuse to resume a directory holding another demo (other rows, seeds, budget or recipes): its models
    would be mixed into this demo's table."""
    path = out / PLAN_FILE
    if not path.is_file():
        raise UserError(f"--resume: {out} holds no demo ({PLAN_FILE} is missing); pass --overwrite to replace it")
    before = json.loads(path.read_text())
    changed = [key for key in demo_plan if before.get(key) != demo_plan[key]]
    if changed:
        raise UserError(
            f"--resume: the demo in {out} was run with other {', '.join(changed)} ({path}); "
            "run it as it was, or pass --overwrite to start again"
        )


def run_table(out: Path, quick: bool, selected: list[str], seed: int | None, jobs: int) -> list:
    """Train (or reuse, where a row's final model is saved) and evaluate `selected` rows with one seed into
    `out`; returns their EvalResults."""
    began = time.perf_counter()
    configs = {row: plan.row_config(row, out, quick, seed) for row in selected}
    cot = plan.row_config("cot", out, quick, seed)  # the task: CoT-SFT's recipe draws it, every row trains on it
    train = load_problems(cot.dataset, "train", params=cot.dataset_params, limit=cot.num_train_examples, seed=cot.seed)
    num_test = plan.QUICK_NUM_TEST if quick else plan.NUM_TEST
    candidates = load_problems(cot.dataset, "test", params=plan.TEST_TASK, limit=num_test, seed=cot.seed)
    test = held_out_from(train, candidates)
    out.mkdir(parents=True, exist_ok=True)
    write_coconut(test, out / HELD_OUT_FILE)  # so `eval --file` can score any model on the table's problems
    threads = max(1, (os.cpu_count() or 1) // jobs)
    reused = [row for row in selected if (out / "runs" / row / "final").is_dir()]  # written last, atomically
    work = [
        Job(
            name=row,
            # A row stopped mid-way starts again: its output directory is cleared first.
            command=plan.row_command(row, out, quick, seed)
            + (["--overwrite_output_dir", "true"] if (out / "runs" / row).exists() else []),
            start=plan.ROWS[row].start,
            seconds=plan.ROWS[row].seconds,
            total_steps=configs[row].max_steps,
            log=out / "runs" / row / "log.jsonl",
            output=out / "logs" / f"{row}.txt",
            done=row in reused,
        )
        for row in selected
    ]
    print(
        f"demo task: 3-step chains of '+-*' mod 10; {len(train)} training problems (1-3 steps), "
        f"{len(test)} held-out 3-step test problems"
    )
    print(f"example: {train[0].question}  ->  {train[0].cot}  ### {train[0].answer}")
    expected = "" if quick else f"; about {schedule_seconds(work, jobs) / 60:.0f} min on 2 CPU cores"
    print(f"rows: {', '.join(selected)}; {jobs} at a time, {threads} thread(s) each{expected}")
    print(f"each row is `latentreason train|rl --config <row>-tiny ...`; its output goes to {out / 'logs'}")
    if reused:
        print(f"reused from an earlier sitting: {', '.join(reused)} (their saved models)")
    timings = {f"train_{row}_s": s for row, s in run_jobs(work, jobs, threads).items()}
    results = []
    hf_logging.disable_progress_bar()  # a bar per loaded tiny model says nothing here
    for row in selected:
        final = out / "runs" / row / "final"
        lm = LatentLM.from_pretrained(final).eval()
        solver = method_for(lm, str(final)).solver(lm)
        solver.name = row
        results.append(evaluate(solver, test, "chain-3step (held-out)", 250))
    timings["total_s"] = round(time.perf_counter() - began, 1)
    meta = {"test_task": plan.TEST_TASK, "quick": quick, "seed": cot.seed, "jobs": jobs, "threads": threads}
    meta["reused"] = reused  # trained in an earlier sitting: no training time here
    meta["timings"] = timings
    paths = write_report(results, out, meta)
    print("\n" + markdown_table(results))
    print(
        f"\ntotal time {timings['total_s']:.0f} s; report: {paths['json']}"
        + (f", plot: {paths['plot']}" if "plot" in paths else "")
    )
    return results
