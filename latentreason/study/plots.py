"""A task's two study plots: accuracy against reasoning tokens, and validation accuracy during training."""

from __future__ import annotations

import statistics
from pathlib import Path

from latentreason.evaluation.report import finish_accuracy_axes, load_pyplot, save_figure
from latentreason.evaluation.spread import Spread
from latentreason.study.records import RunRecord


def plot_accuracy_vs_tokens(task: str, rows: dict[str, list[RunRecord]], path: Path) -> Path | None:
    """One point per method (mean over its finished seeds, std as the error bar); None without matplotlib."""
    plt = load_pyplot()
    finished = {method: runs for method, runs in rows.items() if runs}
    if plt is None or not finished:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = method_colors(rows)
    most = 0.0
    for method, runs in finished.items():
        tokens = statistics.fmean(r.latent_tokens + r.text_tokens for r in runs)
        accuracy = Spread.of([r.accuracy for r in runs])
        mean, std = 100 * accuracy.mean, 100 * accuracy.std
        ax.errorbar(tokens, mean, yerr=std, fmt="o", ms=7, capsize=3, color=colors[method], label=method)
        most = max(most, tokens)
    ax.set_xlim(-0.05 * most - 0.5, 1.1 * most + 0.5)
    finish_accuracy_axes(ax, "mean reasoning tokens per problem (text + latent)", "accuracy (%)", task)
    return save_figure(fig, path)


def plot_training_curves(task: str, rows: dict[str, list[RunRecord]], path: Path) -> Path | None:
    """One line per method: validation accuracy averaged over its seeds at the steps they all logged.

    None when no run logged a curve (or matplotlib is missing).
    """
    plt = load_pyplot()
    lines = {method: line for method, runs in rows.items() if (line := mean_curve(runs))}
    if plt is None or not lines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = method_colors(rows)
    for method, line in lines.items():
        steps, accuracies = zip(*line)
        ax.plot(steps, [100 * a for a in accuracies], marker="o", ms=3, color=colors[method], label=method)
    finish_accuracy_axes(ax, "optimizer step", "validation accuracy (%)", task)
    return save_figure(fig, path)


def method_colors(rows: dict[str, list[RunRecord]]) -> dict[str, str]:
    """A method keeps its colour in both plots of a task (matplotlib's cycle C0..C9, in the table's order)."""
    return {method: f"C{i % 10}" for i, method in enumerate(rows)}


def mean_curve(runs: list[RunRecord]) -> list[tuple[int, float]]:
    """[(step, mean validation accuracy)] over the runs that logged a curve, at the steps all of them logged."""
    curves = [dict(run.curve) for run in runs if run.curve]
    if not curves:
        return []
    shared = sorted(set.intersection(*(set(curve) for curve in curves)))
    return [(step, statistics.fmean(curve[step] for curve in curves)) for step in shared]
