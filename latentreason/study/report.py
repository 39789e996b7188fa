"""The study report, `<out_dir>/<name>.md`: per task a table over seeds, paired tests against the reference rows,
two plots (in `<out_dir>/<name>/`), then how the study was run (commands, times, machine, versions, config).

Statistics, and why:
- A row's accuracy is the mean over the seeds that finished, with the sample standard deviation (n - 1) and the
  range: the seed-to-seed spread of a training recipe, which for tiny models is often larger than the gap between
  two methods. A row with fewer seeds than the study planned says so ("2 of 3"); its mean covers only those.
- Every method of a task is evaluated on the same problems in the same order, so two methods are compared
  problem by problem (paired). Pairing cancels what the problems share (some are hard for every method) and
  leaves the method's effect, so it detects a real difference with far fewer problems than comparing two
  accuracies as independent proportions.
- A problem's score for a method is its correctness averaged over the seeds that both compared methods finished
  (a problem two of three seeds solve scores 2/3). The tests therefore ask "is A better than B on these problems,
  seed noise averaged in"; with three seeds there are too few runs to treat seeds themselves as the samples, which
  is why the table shows their spread beside the tests.
- Paired bootstrap: 10,000 resamples of the problems with replacement, numpy generator seed 0, so the report is
  identical every time it is written. The 95% interval is the 2.5th and 97.5th percentiles of the resampled mean
  differences; the two-sided p is twice the share of resamples at or past 0 on the far side from the observed
  difference, with +1 above and below (never 0; the smallest is 2/10,001).
- Sign test: the exact two-sided binomial test on the problems where the two methods differ (ties dropped). It
  uses only which method did better on each problem, not by how much: a check on the bootstrap that assumes
  nothing about the shape of the differences.
- No correction for multiple comparisons: with many rows, one p below 0.05 now and then is expected by chance.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable
from pathlib import Path

import yaml

from latentreason.errors import UserError
from latentreason.evaluation.report import atomic_write_text, markdown_grid
from latentreason.evaluation.spread import Spread
from latentreason.study.plots import plot_accuracy_vs_tokens, plot_training_curves
from latentreason.study.records import RunRecord
from latentreason.study.significance import paired_bootstrap, sign_test

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
NO_COT = "no-cot"
FOLDED_COMMANDS = 8  # more runs than this and the commands fold under <details>
META_ORDER = ("machine", "versions", "git_commit", "git_uncommitted_changes", "started", "ended")

# task -> method -> seed -> its finished run, or None for a planned run that has not finished
Grid = dict[str, dict[str, dict[int, RunRecord | None]]]

PLOTS = (
    ("accuracy-vs-tokens", plot_accuracy_vs_tokens, "accuracy against reasoning tokens"),
    ("training-curves", plot_training_curves, "validation accuracy during training"),
)


def write_study_report(
    name: str,
    runs: list[RunRecord],
    out_dir: str | Path,
    meta: dict,
    published: dict[str, dict[str, tuple[float, float | None]]] | None = None,
    baseline: str = "cot",
    *,
    expected: Iterable[tuple[str, str, int]] | None = None,
    preface: str = "",
) -> dict[str, Path]:
    """Write `<out_dir>/<name>.md` and its plots; returns {'markdown': path, '<task>/<plot>': path, ...}.

    `published`: {task: {method: (accuracy %, reasoning tokens or None)}}, shown beside our numbers.
    `expected`: the planned (task, method, seed) runs; by default every method seen in a task is expected with
    every seed seen in the study. Planned runs without a record show as missing, never silently averaged.
    `meta`: rendered under "How this was run" (see `study_environment()`, plus the runner's config and times).
    `preface`: markdown placed under the overview (the study's question and what was found).
    """
    grid = build_grid(name, runs, expected)
    out = Path(out_dir)
    figures = out / name
    figures.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    sections = [overview(name, grid, baseline), *([preface.strip()] if preface.strip() else [])]
    for task in sorted(grid):
        order = method_order(grid[task], baseline)
        finished = {method: finished_runs(grid[task][method]) for method in order}
        lines = [f"## {task}", "", task_table(grid[task], order, (published or {}).get(task))]
        lines += significance(grid[task], order, baseline)
        stem = re.sub(r"[^\w.-]+", "-", task)
        for kind, plot, caption in PLOTS:
            path = plot(task, finished, figures / f"{stem}-{kind}.png")
            if path is not None:
                paths[f"{task}/{kind}"] = path
                lines += ["", f"![{task}: {caption}]({name}/{path.name})"]
        sections.append("\n".join(lines))
    sections.append(how_it_was_run(grid, meta, baseline))
    paths["markdown"] = out / f"{name}.md"
    atomic_write_text(paths["markdown"], "\n\n".join(sections) + "\n")
    return paths


def build_grid(name: str, runs: list[RunRecord], expected: Iterable[tuple[str, str, int]] | None) -> Grid:
    """Place every run in its (task, method, seed) cell; reject duplicates and tasks evaluated inconsistently."""
    if expected is None:
        seeds = {run.seed for run in runs}
        expected = [(run.task, run.method, seed) for run in runs for seed in seeds]
    grid: Grid = {}
    for task, method, seed in expected:
        grid.setdefault(task, {}).setdefault(method, {})[seed] = None
    for run in runs:
        cell = grid.setdefault(run.task, {}).setdefault(run.method, {})
        if cell.get(run.seed) is not None:
            raise UserError(
                f"study {name}: two records of {run.task}/{run.method} seed {run.seed} "
                f"({cell[run.seed].model_dir} and {run.model_dir}); keep one"
            )
        cell[run.seed] = run
    if not grid:
        raise UserError(f"study {name}: nothing to report (no runs and none planned)")
    for task, rows in grid.items():
        check_same_problems(name, task, rows)
    return grid


def check_same_problems(name: str, task: str, rows: dict[str, dict[int, RunRecord | None]]) -> None:
    """The paired tests need every run of a task scored on the same problems: at least the same count."""
    counts = {
        f"{method} seed {seed}": (run.n, len(run.correct))
        for method, seeds in sorted(rows.items())
        for seed, run in sorted(seeds.items())
        if run is not None
    }
    if len(set(counts.values())) > 1 or any(n != scored for n, scored in counts.values()):
        found = ", ".join(f"{run}: n={n}, {scored} scored" for run, (n, scored) in counts.items())
        raise UserError(
            f"study {name}, task {task}: every run must be evaluated on the same problems, but the counts differ "
            f"({found}); re-run the runs evaluated on another set"
        )


def method_order(rows: dict, baseline: str) -> list[str]:
    """The reference rows first (baseline, then no-cot), then the others alphabetically."""
    references = [method for method in (baseline, NO_COT) if method in rows]
    return references + sorted(method for method in rows if method not in references)


def finished_runs(seeds: dict[int, RunRecord | None]) -> list[RunRecord]:
    return [run for _, run in sorted(seeds.items()) if run is not None]


def overview(name: str, grid: Grid, baseline: str) -> str:
    planned = [(task, method, seed) for task in grid for method in grid[task] for seed in grid[task][method]]
    missing = sorted(key for key in planned if grid[key[0]][key[1]][key[2]] is None)
    seeds = sorted({seed for _, _, seed in planned})
    lines = [
        f"# Study: {name}",
        "",
        f"Tasks: {', '.join(sorted(grid))}. Seeds: {', '.join(map(str, seeds))}. "
        f"{len(planned) - len(missing)} of {len(planned)} planned runs finished.",
    ]
    if missing:
        shown = ", ".join(f"{task}/{method} seed {seed}" for task, method, seed in missing)
        lines.append(f"Not finished (marked in the tables, left out of every mean and test): {shown}.")
    lines += ["", "Accuracy is the mean ± sample standard deviation over the finished seeds (in points)."]
    references = [method for method in (baseline, NO_COT) if any(method in rows for rows in grid.values())]
    if references:
        lines[-1] += (
            f" Each method is tested against {' and '.join(references)} on the task's same problems: a problem "
            "scores its correctness averaged over the seeds both rows finished; the interval is a 95% paired "
            f"bootstrap interval ({BOOTSTRAP_RESAMPLES:,} resamples of the problems); p-values are two-sided, with "
            "no correction for the number of comparisons."
        )
    return "\n".join(lines)


def task_table(rows: dict[str, dict[int, RunRecord | None]], order: list[str], paper: dict | None) -> str:
    seeds = sorted({seed for planned in rows.values() for seed in planned})
    head = ["method", "seeds", "accuracy: mean ± std", "min-max", *(["paper: acc / tok"] if paper else [])]
    head += [*(f"seed {seed}" for seed in seeds), "latent tok", "text tok", "train time", "n"]
    table = []
    for method in order:
        planned = rows[method]
        done = finished_runs(planned)
        count = f"{len(done)} of {len(planned)}"
        cells = [method, count if len(done) == len(planned) else f"**{count}**"]
        cells += Spread.of([run.accuracy for run in done]).cells() if done else ["—", "—"]
        if paper:
            cells.append(paper_cell(paper.get(method)))
        cells += [seed_cell(planned, seed) for seed in seeds]
        if done:
            latent = statistics.fmean(run.latent_tokens for run in done)
            text = statistics.fmean(run.text_tokens for run in done)
            train = statistics.fmean(run.train_seconds for run in done)
            cells += [f"{latent:.1f}", f"{text:.1f}", duration(train), str(done[0].n)]
        else:
            cells += ["—"] * 4
        table.append(cells)
    notes = "Tokens and train time are means over the finished seeds."
    if paper:
        notes += " Paper: the publication's accuracy (%) and reasoning tokens, with its own model and data."
    return markdown_grid(head, table) + "\n\n" + notes


def seed_cell(planned: dict[int, RunRecord | None], seed: int) -> str:
    if seed not in planned:
        return ""  # this row was not planned with this seed
    run = planned[seed]
    return "missing" if run is None else f"{run.accuracy:.1%}"


def paper_cell(published: tuple[float, float | None] | None) -> str:
    if published is None:
        return "—"
    accuracy, tokens = published
    return f"{accuracy:.1f}% / " + ("—" if tokens is None else f"{tokens:.1f}")


def significance(rows: dict[str, dict[int, RunRecord | None]], order: list[str], baseline: str) -> list[str]:
    """One line per (method, reference) pair; a pair already tested the other way round is not repeated."""
    lines, tested = [], set()
    for reference in (baseline, NO_COT):
        if reference not in rows:
            continue
        for method in order:
            pair = frozenset((method, reference))
            if method == reference or pair in tested:
                continue
            tested.add(pair)
            lines.append(comparison(method, reference, rows[method], rows[reference]))
    return ["", "Paired tests on the same problems:", "", *lines] if lines else []


def comparison(method: str, reference: str, ours: dict, theirs: dict) -> str:
    """'- coconut vs cot: -3.1 points [-6.0, -0.4], bootstrap p=0.030, sign test p=0.041 (...)'."""
    shared = sorted(seed for seed, run in ours.items() if run is not None and theirs.get(seed) is not None)
    if not shared:
        return f"- {method} vs {reference}: not tested, no seed finished for both"
    a = problem_scores([ours[seed] for seed in shared])
    b = problem_scores([theirs[seed] for seed in shared])
    boot = paired_bootstrap(a, b, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    sign = sign_test(a, b)
    return (
        f"- {method} vs {reference}: {100 * boot.difference:+.1f} points "
        f"[{100 * boot.low:.1f}, {100 * boot.high:.1f}], bootstrap {p_value(boot.p)}, sign test {p_value(sign.p)} "
        f"(better on {sign.better} problems, worse on {sign.worse}, of {len(a)}; "
        f"seed{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))})"
    )


def problem_scores(runs: list[RunRecord]) -> list[float]:
    """Per problem, the share of `runs` (one per seed) that solved it."""
    return [sum(solved) / len(runs) for solved in zip(*(run.correct for run in runs))]


def p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def how_it_was_run(grid: Grid, meta: dict, baseline: str) -> str:
    runs = [
        run
        for task in sorted(grid)
        for method in method_order(grid[task], baseline)
        for run in finished_runs(grid[task][method])
    ]
    train = sum(run.train_seconds for run in runs)
    evaluation = sum(run.eval_seconds for run in runs)
    lines = [
        "## How this was run",
        "",
        f"{len(runs)} runs: {duration(train)} of training and {duration(evaluation)} of evaluation, "
        f"{duration(train + evaluation)} in all (summed over the runs; runs side by side overlap in wall time).",
        "",
        *meta_lines(meta),
        "",
        "The command that trained each run:",
        "",
    ]
    commands = command_lines(runs)
    if len(runs) > FOLDED_COMMANDS:
        commands = [f"<details><summary>the {len(runs)} commands</summary>", "", *commands, "</details>"]
    return "\n".join(lines + commands).rstrip()


def meta_lines(meta: dict) -> list[str]:
    """Known keys in a fixed order, the others alphabetically; a dict becomes a nested list, the config YAML."""
    keys = [key for key in META_ORDER if key in meta]
    keys += sorted(key for key in meta if key not in META_ORDER and key != "config")
    lines = []
    for key in keys:
        label, value = key.replace("_", " "), meta[key]
        if isinstance(value, dict):
            lines.append(f"- {label}:")
            lines += [f"  - {inner}: {plain(item)}" for inner, item in value.items()]
        else:
            lines.append(f"- {label}: {plain(value)}")
    if "config" in meta:
        config = meta["config"]
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=True)
        lines += ["", "The study config:", "", "```yaml", text.rstrip(), "```"]
    return lines


def plain(value) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def command_lines(runs: list[RunRecord]) -> list[str]:
    """A shell block per task/method, a comment line per run with its steps, times and model directory."""
    lines = []
    for task, method in dict.fromkeys((run.task, run.method) for run in runs):
        lines += [f"**{task} / {method}**", "", "```bash"]
        for run in runs:
            if (run.task, run.method) == (task, method):
                lines.append(
                    f"# seed {run.seed}: {run.steps} steps, train {duration(run.train_seconds)}, "
                    f"eval {duration(run.eval_seconds)}, model {run.model_dir}"
                )
                lines.append(run.command)
        lines += ["```", ""]
    return lines
