"""`latentreason study`: its flags."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from latentreason.errors import UserError


def cmd_study(argv: list[str]) -> int:
    from latentreason.study.config import load_study
    from latentreason.study.runner import run_study

    parser = argparse.ArgumentParser(
        prog="latentreason study",
        description="Train and evaluate every (task, method, seed) of a study, a few runs at a time, resuming "
        "where an earlier invocation stopped, then write its report (tables with spread over seeds, paired "
        "significance tests, plots, the exact commands). See docs/study.md.",
    )
    parser.add_argument("--config", required=True, help="a shipped study (e.g. coconut-tasks) or a YAML file")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the study's 'quick' profile: the pipeline on a sliver")
    size.add_argument("--full", action="store_true", help="the study's 'full' profile: long; run it in sittings")
    parser.add_argument("--output-dir", help="where runs, models and logs go (default runs/study/<name>[-profile])")
    parser.add_argument(
        "--report-dir", default="docs/results", help="where <name>[-profile].md and its plots go (default docs/results)"
    )
    parser.add_argument(
        "--data-dir", help="the evaluation benchmarks' directory (default: $LATENTREASON_DATA_DIR, else the hub)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at the same time, each with cores/jobs threads")
    parser.add_argument("--threads", type=int, help="threads per run (default: cores / jobs)")
    parser.add_argument(
        "--launcher",
        help="train each run on several devices with this command, e.g. 'accelerate launch --num_processes 4' or "
        "'torchrun --nproc_per_node 4' (give --jobs 1 so runs do not share the devices)",
    )
    parser.add_argument("--tasks", help="comma-separated tasks to run (default: all)")
    parser.add_argument("--rows", help="comma-separated rows to run; the rows they start from are added")
    parser.add_argument("--seeds", help="comma-separated seeds, replacing the study's")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: write the report from the runs finished so far"
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a failed run stops only the runs that start from it, not the study (exit status 1 at the end)",
    )
    args = parser.parse_args(argv)
    profile = "quick" if args.quick else "full" if args.full else None
    study = load_study(args.config, profile)
    if args.seeds:
        from latentreason.config import seed_list

        study.seeds = seed_list(args.seeds, "--seeds")
    name = study.name + (f"-{profile}" if profile else "")
    output_dir = Path(args.output_dir or Path("runs") / "study" / name)
    paths, failures = run_study(
        study,
        output_dir,
        name,
        Path(args.report_dir),
        data_dir=args.data_dir,
        jobs=args.jobs,
        tasks=_names(args.tasks),
        rows=_names(args.rows),
        train=not args.report_only,
        launcher=tuple(shlex.split(args.launcher)) if args.launcher else (),
        threads=args.threads,
        keep_going=args.keep_going,
    )
    print("report: " + ", ".join(str(p) for p in paths.values()))
    if failures:
        print(f"{len(failures)} run(s) did not finish:\n" + "\n".join(f"  {line}" for line in failures))
        return 1
    return 0


def _names(text: str | None) -> list[str] | None:
    names = [part.strip() for part in text.split(",") if part.strip()] if text else []
    if text is not None and not names:
        raise UserError(f"expected comma-separated names, got {text!r}")
    return names or None
