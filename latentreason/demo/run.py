"""`latentreason demo`: train and compare methods on a generated task, offline, on a CPU.

Task: chains of single-digit operations modulo 10 ('7 + 5 - 3 * 8' -> '<<7+5=2>> <<2-3=9>> <<9*8=2>>
### 2'). Training mixes 1- to 3-step chains; the test set holds 3-step chains whose questions never
occur in training. Each row trains with its shipped recipe in its own process (demo/plan.py), a few
rows side by side (demo/scheduler.py); then every row is evaluated here on the same test problems.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

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


def run_demo(
    output_dir: str | Path = "demo_output",
    quick: bool = False,
    overwrite: bool = False,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    jobs: int = 2,
) -> dict[int | None, list]:
    """Train CoT-SFT, No-CoT and latent methods on a generated task and compare them on held-out problems.

    `rows`: None for the default rows, ['all'] for the whole table. `seeds` replace every recipe's seed:
    another draw of the problems, the initialisation and the data order. With several, each seed's table
    goes to `seed-<S>/` and summary.md gives every row's mean, standard deviation and range over them.
    `jobs`: rows trained at the same time; each gets cores // jobs threads (at least one).
    Returns {seed: results} (seed None: the recipes' own).
    """
    if jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    selected = plan.select_rows(rows)
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --output-dir")
        shutil.rmtree(out)
    if not seeds or len(seeds) == 1:
        seed = seeds[0] if seeds else None
        return {seed: run_table(out, quick, selected, seed, jobs)}
    per_seed = {}
    for seed in seeds:
        print(f"\n=== seed {seed} ({len(per_seed) + 1} of {len(seeds)}) ===")
        per_seed[seed] = run_table(out / f"seed-{seed}", quick, selected, seed, jobs)
    summary = seed_summary(per_seed)
    paths = write_summary(summary, out, {"seeds": seeds, "quick": quick, "jobs": jobs})
    print(f"\nover seeds {', '.join(map(str, seeds))}:\n{summary_table(summary)}\n\nsummary: {paths['markdown']}")
    return per_seed


def run_table(out: Path, quick: bool, selected: list[str], seed: int | None, jobs: int) -> list:
    """Train and evaluate `selected` rows with one seed into `out`; returns their EvalResults."""
    began = time.perf_counter()
    configs = {row: plan.row_config(row, out, quick, seed) for row in selected}  # bad settings fail here, not mid-run
    cot = plan.row_config("cot", out, quick, seed)  # the task: CoT-SFT's recipe draws it, every row trains on it
    train = load_problems(cot.dataset, "train", params=cot.dataset_params, limit=cot.num_train_examples, seed=cot.seed)
    num_test = plan.QUICK_NUM_TEST if quick else plan.NUM_TEST
    candidates = load_problems(cot.dataset, "test", params=plan.TEST_TASK, limit=num_test, seed=cot.seed)
    test = held_out_from(train, candidates)
    out.mkdir(parents=True, exist_ok=True)
    write_coconut(test, out / HELD_OUT_FILE)  # so `eval --file` can score any model on the table's problems
    threads = max(1, (os.cpu_count() or 1) // jobs)
    work = [
        Job(
            name=row,
            command=plan.row_command(row, out, quick, seed),
            start=plan.ROWS[row].start,
            seconds=plan.ROWS[row].seconds,
            total_steps=configs[row].max_steps,
            log=out / "runs" / row / "log.jsonl",
            output=out / "logs" / f"{row}.txt",
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
    meta["timings"] = timings
    paths = write_report(results, out, meta)
    print("\n" + markdown_table(results))
    print(
        f"\ntotal time {timings['total_s']:.0f} s; report: {paths['json']}"
        + (f", plot: {paths['plot']}" if "plot" in paths else "")
    )
    return results
