"""The demo over several seeds: each row's accuracy as mean, standard deviation and range over the seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from latentreason.evaluation.report import atomic_write_text, markdown_grid
from latentreason.evaluation.spread import Spread


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
        accuracy = Spread.of(list(row["accuracy_by_seed"].values()))
        summary.append(
            {
                "method": row["method"],
                "accuracy_by_seed": row["accuracy_by_seed"],
                "accuracy_mean": accuracy.mean,
                "accuracy_std": accuracy.std,
                "accuracy_min": accuracy.low,
                "accuracy_max": accuracy.high,
                "latent_tokens_mean": statistics.fmean(row["latent"]),
            }
        )
    return summary


def summary_table(summary: list[dict]) -> str:
    seeds = list(summary[0]["accuracy_by_seed"]) if summary else []
    head = ["method", "accuracy: mean ± std", "min-max", *[f"seed {s}" for s in seeds], "latent tok"]
    rows = []
    for row in summary:
        accuracy = Spread(row["accuracy_mean"], row["accuracy_std"], row["accuracy_min"], row["accuracy_max"])
        rows.append(
            [
                row["method"],
                *accuracy.cells(),
                *[f"{row['accuracy_by_seed'][s]:.1%}" for s in seeds],
                f"{row['latent_tokens_mean']:.1f}",
            ]
        )
    return markdown_grid(head, rows)


def write_summary(summary: list[dict], output_dir: Path, meta: dict) -> dict[str, Path]:
    paths = {"json": output_dir / "summary.json", "markdown": output_dir / "summary.md"}
    atomic_write_text(paths["json"], json.dumps({"rows": summary, **meta}, indent=2))
    atomic_write_text(paths["markdown"], summary_table(summary) + "\n")
    return paths
