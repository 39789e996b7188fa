"""Run a solver over a benchmark: accuracy, reasoning length (text and latent), latency."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from tqdm.auto import tqdm

from latentreason.data.answers import extract_answer, guess_kind, is_correct
from latentreason.data.problems import Problem
from latentreason.data.votes import vote_key
from latentreason.evaluation.journal import Journal
from latentreason.evaluation.tts_metrics import Samples, ScalingCurve, scaling_curve


@dataclass
class EvalResult:
    method: str
    benchmark: str
    n: int
    accuracy: float
    text_tokens: float  # mean explicit reasoning tokens per problem
    latent_tokens: float  # mean continuous thoughts per problem
    reasoning_tokens: float  # the two together
    latency_s: float  # mean wall time per problem (batch time / batch size)
    problems_per_s: float
    records: list[dict] = field(default_factory=list, repr=False)
    scaling: ScalingCurve | None = field(default=None, repr=False)  # with several samples per problem
    beam_curve: dict | None = field(default=None, repr=False)  # {"widths": [W...], "beam": [accuracy...]}
    metrics: dict[str, float] = field(default_factory=dict)  # means of the solver's own per-problem figures

    def summary(self) -> dict:
        """The results.json entry: every field but the records, the solver's own figures, and the scaling
        metrics when there are any."""
        out = asdict(self)
        for key in ("records", "scaling", "beam_curve"):
            out.pop(key)
        out.update(out.pop("metrics"))
        if self.beam_curve is not None:
            out["accuracy_vs_beam_width"] = self.beam_curve
        return out if self.scaling is None else {**out, **self.scaling.fields()}


def answer_mode_for(reference: str, numeric_mode: str) -> str:
    """Numeric references use the configured mode; sentence answers (ProsQA, digit strings) their own."""
    return numeric_mode if guess_kind(reference) == "number" else "sentence"


def evaluate(
    solver,
    problems: list[Problem],
    benchmark: str = "",
    batch_size: int = 64,
    answer_mode: str = "strict",
    progress: bool = True,
    journal: Journal | None = None,
) -> EvalResult:
    """Solve `problems` in batches of `batch_size` and score them against their answers; with a
    `journal`, problems solved by an earlier, interrupted run with the same key are not solved again."""
    if not problems:
        raise ValueError("evaluate: no problems to evaluate")
    records, elapsed = _solve(solver, problems, batch_size, answer_mode, progress, journal)
    return _summarize(solver.name, benchmark, records, elapsed, elapsed)


def evaluate_sharded(
    solver,
    problems: list[Problem],
    accelerator,
    benchmark: str = "",
    batch_size: int = 64,
    answer_mode: str = "strict",
    progress: bool = True,
    journal: Journal | None = None,
) -> EvalResult:
    """`evaluate` split over the processes of `accelerator`; every process returns the same result.

    Process r solves the contiguous shard r of `problems` (shards differ in size by at most one, and
    may be empty); the records are gathered in rank order, so each problem appears exactly once and
    in its original place. Latency is the mean wall time per problem within a process; throughput
    counts the slowest process's time. Each process keeps its own journal (`journal`'s file name with
    `-<rank>-of-<world>`), valid only for the same number of processes.
    """
    from accelerate.utils import gather_object

    if not problems:
        raise ValueError("evaluate: no problems to evaluate")
    rank, world, n = accelerator.process_index, accelerator.num_processes, len(problems)
    shard = problems[rank * n // world : (rank + 1) * n // world]
    if journal is not None:
        path = journal.path.with_name(f"{journal.path.stem}-{rank}-of-{world}{journal.path.suffix}")
        journal = Journal(path, {**journal.key, "shard": [rank, world]})
    records, elapsed = _solve(solver, shard, batch_size, answer_mode, progress, journal)
    shards = gather_object([(records, elapsed)])  # [(records, elapsed)] per process, rank order
    all_records = [record for part, _ in shards for record in part]
    return _summarize(solver.name, benchmark, all_records, sum(t for _, t in shards), max(t for _, t in shards))


def _solve(solver, problems: list[Problem], batch_size: int, answer_mode: str, progress: bool, journal=None):
    """(one record per problem, seconds spent in the solver); with a `Journal`, the problems it holds are
    read back instead of solved and every solved batch is appended to it."""
    done, elapsed = journal.solved() if journal is not None else ({}, 0.0)
    done = {i: record for i, record in done.items() if 0 <= i < len(problems)}
    if journal is not None:
        journal.start(keep=bool(done))
    todo = [i for i in range(len(problems)) if i not in done]
    bar = tqdm(total=len(problems), initial=len(done), desc=f"eval {solver.name}", disable=not progress, leave=False)
    for start in range(0, len(todo), batch_size):
        positions = todo[start : start + batch_size]
        chunk = [problems[i] for i in positions]
        began = time.perf_counter()
        solutions = solver.solve(chunk)
        took = time.perf_counter() - began
        elapsed += took
        records = [
            {"question": problem.question, **_scored(sol, problem, answer_mode), "latency_s": took / len(chunk)}
            for problem, sol in zip(chunk, solutions)
        ]
        done.update(zip(positions, records))
        if journal is not None:
            journal.append(positions, records, took)
        bar.update(len(chunk))
    bar.close()
    return [done[i] for i in range(len(problems))], elapsed


def _scored(sol, problem: Problem, answer_mode: str) -> dict:
    """One solution's record (with its `score` when a scorer rated it); with several samples, `correct` and the
    token counts are their means (an estimate of pass@1) and each sample keeps its own record."""
    if sol.samples:
        samples = [_scored(s, problem, answer_mode) for s in sol.samples]
        mean = {key: sum(s[key] for s in samples) / len(samples) for key in ("correct", "text_tokens", "latent_tokens")}
        metrics = _mean_metrics(samples)
        return {**samples[0], **mean, **({"metrics": metrics} if metrics else {}), "samples": samples}
    if sol.beams:
        beams = [{"width": width, **_scored(beam, problem, answer_mode)} for width, beam in sorted(sol.beams.items())]
        return {**_scored(replace(sol, beams=None), problem, answer_mode), "beams": beams}
    mode = answer_mode_for(problem.answer, answer_mode)
    record = {
        "reference": problem.answer,
        "generated": sol.text,
        "prediction": extract_answer(sol.text, mode),
        "correct": is_correct(sol.text, problem.answer, mode=mode),
        "text_tokens": sol.text_tokens,
        "latent_tokens": sol.latent_tokens,
    }
    if sol.metrics:
        record["metrics"] = dict(sol.metrics)
    return record if sol.score is None else {**record, "score": sol.score}


def _mean_metrics(records: list[dict]) -> dict[str, float]:
    """The mean of each solver figure over `records` (none unless every record has them)."""
    if not records or not all(record.get("metrics") for record in records):
        return {}
    keys = records[0]["metrics"]
    return {key: sum(record["metrics"][key] for record in records) / len(records) for key in keys}


def _summarize(method: str, benchmark: str, records: list[dict], solver_s: float, wall_s: float) -> EvalResult:
    """`solver_s`: solver time summed over processes; `wall_s`: the longest process's solver time."""
    n = len(records)
    text = sum(r["text_tokens"] for r in records) / n
    latent = sum(r["latent_tokens"] for r in records) / n
    return EvalResult(
        method=method,
        benchmark=benchmark,
        n=n,
        accuracy=sum(r["correct"] for r in records) / n,
        text_tokens=text,
        latent_tokens=latent,
        reasoning_tokens=text + latent,
        latency_s=solver_s / n,
        problems_per_s=n / wall_s if wall_s > 0 else float("inf"),
        records=records,
        scaling=_scaling(records),
        beam_curve=_beam_curve(records),
        metrics=_mean_metrics(records),
    )


def _scaling(records: list[dict]) -> ScalingCurve | None:
    """The test-time scaling metrics when every problem has several samples (else None); best-of-N only when
    every sample has a score."""
    if not all(len(record.get("samples", ())) > 1 for record in records):
        return None
    return scaling_curve([_samples(record) for record in records])


def _beam_curve(records: list[dict]) -> dict | None:
    """Accuracy at each beam width when every problem was searched at several (else None)."""
    if not all(record.get("beams") for record in records):
        return None
    widths = [beam["width"] for beam in records[0]["beams"]]
    right = [sum(record["beams"][i]["correct"] for record in records) / len(records) for i in range(len(widths))]
    return {"widths": widths, "beam": right}


def _samples(record: dict) -> Samples:
    kind = guess_kind(record["reference"])  # as `is_correct` reads the reference
    scores = [sample.get("score") for sample in record["samples"]]
    return Samples(
        correct=[sample["correct"] for sample in record["samples"]],
        votes=[vote_key(sample["prediction"], kind) for sample in record["samples"]],
        scores=None if None in scores else scores,
    )
