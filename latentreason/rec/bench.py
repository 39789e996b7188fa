"""`latentreason rec bench`: SASRec, ReaRec and PLR trained from their recipes over seeds on the same split,
test Recall/NDCG@10/20 (mean and std over seeds) and inference latency per user. Runs that finished
(output_dir/test_metrics.json) are read back, not retrained, so an interrupted bench continues. The last line
printed is one JSON object."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from latentreason.config import load_config
from latentreason.rec.config import RecConfig
from latentreason.rec.evaluate import latency_per_user
from latentreason.rec.model import Recommender
from latentreason.rec.run import TEST_FILE, run_rec_training, split_for
from latentreason.recipes import SHIPPED_CONFIGS, resolve_shipped

REC_RECIPES = SHIPPED_CONFIGS / "rec"
BENCH_MODELS = ("sasrec", "rearec", "plr")
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")


def rec_recipe(value: str):
    return resolve_shipped(value, REC_RECIPES, "recommendation recipe")


def run_once(model: str, seed: int, root: Path, overrides: dict) -> dict:
    """The test metrics of `model`'s recipe at `seed`, trained into root/<model>-s<seed> unless already there."""
    out = root / f"{model}-s{seed}"
    if not (out / TEST_FILE).is_file():
        values = {**overrides, "seed": seed, "output_dir": str(out), "overwrite_output_dir": True}
        run_rec_training(load_config(RecConfig, rec_recipe(f"{model}-ml100k"), values), progress=False)
    return json.loads((out / TEST_FILE).read_text())


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def run_rec_bench(models: list[str], seeds: list[int], root: Path, overrides: dict, say=print) -> dict:
    summary = {}
    for model in models:
        runs = [run_once(model, seed, root, overrides) for seed in seeds]
        first = Recommender.from_pretrained(root / f"{model}-s{seeds[0]}" / "best")
        split = split_for(first)
        summary[model] = {
            **{k: spread([r["test"][k] for r in runs]) for k in METRICS},
            "latency_ms_per_user": latency_per_user(first, split, batch_size=1),
            "latency_ms_per_user_batch256": latency_per_user(first, split, users=512, batch_size=256),
            "seeds": seeds,
        }
        row = "  ".join(f"{k} {summary[model][k]['mean']:.4f}±{summary[model][k]['std']:.4f}" for k in METRICS)
        say(f"{model:7s} {row}  {summary[model]['latency_ms_per_user']:.2f} ms/user")
    result = {
        model: {
            "recall@10": s["recall@10"]["mean"],
            "ndcg@10": s["ndcg@10"]["mean"],
            "latency_ms_per_user": s["latency_ms_per_user"],
        }
        for model, s in summary.items()
    }
    (root / "bench.json").write_text(json.dumps(summary, indent=2))
    return result
