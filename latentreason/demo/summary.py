"""The demo over several seeds: each row's accuracy as mean, standard deviation and range over the seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from latentreason.evaluation.report import atomic_write_text


def seed_summary(per_seed: dict[int, list]) -> list[dict]:
    """{seed: [EvalResult per row]} -> one record per row: accuracies per seed, mean, sample std, min, max."""
    rows: dict[str, dict] = {}
    for seed, results in per_seed.items():
        for result in results:
            row = rows.setdefault(result.method, {"method": result.method, "accuracy_by_seed": {}, "latent": []})
            row["accuracy_by_seed"][seed] = result.accuracy
            row["latent"].append(result.latent_tokens)
    summary = []
    for row in rows.values():
        accuracies = list(row["accuracy_by_seed"].values())
        summary.append(
            {
                "method": row["method"],
                "accuracy_by_seed": row["accuracy_by_seed"],
                "accuracy_mean": statistics.fmean(accuracies),
                "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "accuracy_min": min(accuracies),
                "accuracy_max": max(accuracies),
                "latent_tokens_mean": statistics.fmean(row["latent"]),
            }
        )
    return summary


def summary_table(summary: list[dict]) -> str:
    seeds = list(summary[0]["accuracy_by_seed"]) if summary else []
    head = ["method", "accuracy: mean ± std", "min-max", *[f"seed {s}" for s in seeds], "latent tok"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary:
        cells = [
            row["method"],
            f"{row['accuracy_mean']:.1%} ± {row['accuracy_std'] * 100:.1f}",
            f"{row['accuracy_min']:.1%}-{row['accuracy_max']:.1%}",
            *[f"{row['accuracy_by_seed'][s]:.1%}" for s in seeds],
            f"{row['latent_tokens_mean']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(summary: list[dict], output_dir: Path, meta: dict) -> dict[str, Path]:
    paths = {"json": output_dir / "summary.json", "markdown": output_dir / "summary.md"}
    atomic_write_text(paths["json"], json.dumps({"rows": summary, **meta}, indent=2))
    atomic_write_text(paths["markdown"], summary_table(summary) + "\n")
    return paths
