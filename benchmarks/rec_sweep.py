"""PLR's accuracy against the number of streams M and the depth T (one seed each), and the ablations of our
choices, on MovieLens-100K; writes sweep.json and sweep.png (matplotlib: the `plot` extra).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/rec_sweep.py --out runs/rec-sweep

Runs that finished are read back (runs/rec-sweep/<name>/test_metrics.json), so an interrupted sweep continues.
`--only m4-t1,no-regulariser` trains just those runs (to split the sweep over processes); `--finished-only`
writes the summary and the plot from the runs that finished, listing the missing ones, without training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentreason.config import load_config
from latentreason.rec.bench import rec_recipe
from latentreason.rec.config import RecConfig
from latentreason.rec.run import TEST_FILE, run_rec_training

WIDTHS = (1, 2, 4)  # M at T = 1
DEPTHS = (1, 2, 3)  # T at M = 2
# Pooling only differs from T = 2 on (at T = 1 a stream has one output): last-pooling compares with m2-t2.
ABLATIONS = {
    "no-regulariser": {"diversity_weight": 0.0},
    "no-fast-loss": {"fast_loss_weight": 0.0},
    "last-pooling": {"stream_pooling": "last", "reasoning_steps": 2},
}
RUNS = {
    **{f"m{m}-t1": {"streams": m, "reasoning_steps": 1} for m in WIDTHS},
    **{f"m2-t{t}": {"streams": 2, "reasoning_steps": t} for t in DEPTHS},
    **ABLATIONS,
}


def run(out: Path, name: str, seed: int, train: bool) -> dict | None:
    """The test metrics of run `name`, trained first unless finished (or, with train=False, None if missing)."""
    target = out / name
    if not (target / TEST_FILE).is_file():
        if not train:
            return None
        values = {"seed": seed, "output_dir": str(target), "overwrite_output_dir": True, **RUNS[name]}
        run_rec_training(load_config(RecConfig, rec_recipe("plr-ml100k"), values), progress=False)
    return json.loads((target / TEST_FILE).read_text())["test"]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, key, label in ((axes[0], "width", "streams M (T = 1)"), (axes[1], "depth", "reasoning steps T (M = 2)")):
        xs = sorted(int(x) for x, metrics in results[key].items() if metrics is not None)
        for metric in ("ndcg@10", "recall@10"):
            ax.plot(xs, [results[key][str(x)][metric] for x in xs], marker="o", label=metric)
        ax.set_xlabel(label)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test metric, MovieLens-100K")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/rec-sweep")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", help=f"comma-separated runs to train, of {', '.join(RUNS)}")
    parser.add_argument("--finished-only", action="store_true", help="summarise finished runs, train none")
    args = parser.parse_args()
    out = Path(args.out)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(RUNS))
        if unknown:
            parser.error(f"--only: unknown runs {unknown}; expected some of {list(RUNS)}")
        for name in args.only.split(","):
            run(out, name, args.seed, train=True)
        return
    train = not args.finished_only
    results = {
        "width": {str(m): run(out, f"m{m}-t1", args.seed, train) for m in WIDTHS},
        "depth": {str(t): run(out, f"m2-t{t}", args.seed, train) for t in DEPTHS},
        "ablations": {name: run(out, name, args.seed, train) for name in ABLATIONS},
    }
    (out / "sweep.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "sweep.png")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
