"""results.json, markdown tables and (with matplotlib) an accuracy-vs-reasoning-tokens plot; with several
samples per problem, also the test-time scaling table and an accuracy-vs-samples plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

from latentreason.evaluation.harness import EvalResult

COLUMNS = (
    ("method", "method", "{}"),
    ("benchmark", "benchmark", "{}"),
    ("n", "n", "{}"),
    ("accuracy", "accuracy", "{:.1%}"),
    ("latent_tokens", "latent tok", "{:.1f}"),
    ("text_tokens", "text tok", "{:.1f}"),
    ("reasoning_tokens", "total tok", "{:.1f}"),
    ("latency_s", "latency (ms)", "ms"),
    ("problems_per_s", "problems/s", "{:.1f}"),
)


def markdown_table(results: list[EvalResult]) -> str:
    rows = []
    for res in results:
        row = res.summary()
        rows.append([f"{row[key] * 1000:.2f}" if fmt == "ms" else fmt.format(row[key]) for key, _, fmt in COLUMNS])
    return markdown_grid([title for _, title, _ in COLUMNS], rows)


def scaling_table(results: list[EvalResult]) -> str:
    """Accuracy of each aggregator as the samples per problem grow, one row per result and N."""
    rows = []
    for res in results:
        curve = res.scaling
        if curve is None:
            continue
        best = curve.best_of_n or [None] * len(curve.sizes)
        for n, passed, voted, chosen in zip(curve.sizes, curve.pass_at_n, curve.majority_vote, best):
            cells = [res.method, res.benchmark, str(n), f"{passed:.1%}", f"{voted:.1%}"]
            rows.append(cells + ["-" if chosen is None else f"{chosen:.1%}"])
    head = ["method", "benchmark", "samples N", "pass@N", "majority vote", "best-of-N"]
    return markdown_grid(head, rows)


def markdown_report(results: list[EvalResult]) -> str:
    """results.md: the main table and, when any result has several samples per problem, the scaling table."""
    if all(res.scaling is None for res in results):
        return markdown_table(results)
    note = "Accuracy with N samples per problem (the mean over N-subsets; pass@N at the largest N is the coverage)."
    return f"{markdown_table(results)}\n\n{note}\n\n{scaling_table(results)}"


def markdown_grid(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header, its rule, then one line per row of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def write_report(results: list[EvalResult], output_dir: str | Path, extra: dict | None = None) -> dict[str, Path]:
    """Write results.json, results.md, predictions.jsonl and, when possible, accuracy_vs_tokens.png (and
    accuracy_vs_samples.png when problems have several samples or beam searches of several widths)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"results": [r.summary() for r in results], **(extra or {})}
    paths = {"json": out / "results.json", "markdown": out / "results.md", "predictions": out / "predictions.jsonl"}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2))
    atomic_write_text(paths["markdown"], markdown_report(results) + "\n")
    lines = [json.dumps({"method": r.method, "benchmark": r.benchmark, **rec}) for r in results for rec in r.records]
    atomic_write_text(paths["predictions"], "\n".join(lines) + "\n")
    plot = plot_accuracy_vs_tokens(results, out / "accuracy_vs_tokens.png")
    if plot:
        paths["plot"] = plot
    if any(res.scaling is not None or res.beam_curve is not None for res in results):
        samples_plot = plot_accuracy_vs_samples(results, out / "accuracy_vs_samples.png")
        if samples_plot:
            paths["samples_plot"] = samples_plot
    return paths


def plot_accuracy_vs_tokens(results: list[EvalResult], path: Path) -> Path | None:
    """Scatter of accuracy against mean reasoning tokens, one point per method; None without matplotlib."""
    plt = load_pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    benchmarks = sorted({r.benchmark for r in results})
    for res in results:
        label = res.method if len(benchmarks) == 1 else f"{res.method} ({res.benchmark})"
        ax.scatter(res.reasoning_tokens, 100 * res.accuracy, s=50, label=label)
    most = max(r.reasoning_tokens for r in results)
    ax.set_xlim(-0.05 * most - 0.5, 1.1 * most + 0.5)
    title = benchmarks[0] if len(benchmarks) == 1 else None
    finish_accuracy_axes(ax, "mean reasoning tokens per problem (text + latent)", "accuracy (%)", title)
    return save_figure(fig, path)


def plot_accuracy_vs_samples(results: list[EvalResult], path: Path) -> Path | None:
    """Accuracy against samples per problem (log2 axis), one line per aggregator and result (beam search's
    against its width, the trajectories it keeps); None without matplotlib."""
    plt = load_pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scaled = [res for res in results if res.scaling is not None or res.beam_curve is not None]
    benchmarks = sorted({r.benchmark for r in scaled})
    sizes = set()
    for res in scaled:
        lines = {}
        if res.scaling is not None:
            curve = res.scaling
            lines = {"pass@N": curve.pass_at_n, "majority vote": curve.majority_vote, "best-of-N": curve.best_of_n}
            lines = {name: (curve.sizes, values) for name, values in lines.items() if values is not None}
        if res.beam_curve is not None:
            lines["RM beam search (N = width)"] = (res.beam_curve["widths"], res.beam_curve["beam"])
        name = res.method if len(benchmarks) == 1 else f"{res.method} ({res.benchmark})"
        for aggregator, (xs, values) in lines.items():
            ax.plot(xs, [100 * v for v in values], marker="o", label=f"{name}: {aggregator}")
            sizes.update(xs)
    ax.set_xscale("log", base=2)
    sizes = sorted(sizes)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    title = benchmarks[0] if len(benchmarks) == 1 else None
    finish_accuracy_axes(ax, "samples per problem N", "accuracy (%)", title)
    return save_figure(fig, path)


def load_pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def finish_accuracy_axes(ax, xlabel: str, ylabel: str, title: str | None) -> None:
    """The house style of an accuracy plot: percent on y from 0 to 100, legend, light grid."""
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)


def save_figure(fig, path: Path) -> Path:
    """Write `fig` as a PNG through a temporary file (a reader never sees half a plot) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
