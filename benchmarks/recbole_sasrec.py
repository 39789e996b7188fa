"""RecBole's own SASRec on exactly our MovieLens-100K split, as the outside reference (docs/recommendation.md).

Run it in a throwaway venv that has RecBole and its dependencies (the package never depends on RecBole):
    python3 -m venv /tmp/recbole-venv && /tmp/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.1
    PYTHONPATH=. /tmp/recbole-venv/bin/python benchmarks/recbole_sasrec.py --seed 42 --out /tmp/recbole-ref

Our loader reads and filters the file (latentreason/rec/data.py); the script writes the kept sequences back as
an atomic file whose timestamps are each interaction's index in its user's sequence, so RecBole's sort by
time reproduces our order exactly (ML-100K has many same-second ties, which a non-stable sort could reorder)
and its leave-one-out split ('LS', valid_and_test) is ours. Full ranking over all items, RecBole's defaults
for SASRec otherwise, with our hidden sizes, learning rate and epoch cap. Prints one JSON line of test metrics.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from latentreason.rec.data import read_interactions, resolve_dataset


def write_atomic(out: Path) -> Path:
    data = read_interactions(resolve_dataset("ml-100k"), min_user_interactions=5)
    folder = out / "ml-100k-ours"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, seq in enumerate(data.sequences):
        lines += [f"u{user}\t{data.item_tokens[item - 1]}\t{k}" for k, item in enumerate(seq)]
    (folder / "ml-100k-ours.inter").write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--out", default="/tmp/recbole-ref")
    # RecBole's default is 2,048 prefixes a batch, 48 updates an epoch here; a smaller batch converges in fewer
    # epochs, each of which costs ~40x ours on CPU (every prefix is its own padded 50-item sequence).
    parser.add_argument("--batch-size", type=int, default=2048)
    args = parser.parse_args()
    import numpy as np

    # RecBole 1.2.1 aliases np.float = np.float_ (and np.complex_, np.unicode_) at start-up (its Config's
    # compatibility_settings); numpy 2 removed those three: give them back, under their numpy 2 names.
    np.float_, np.complex_, np.unicode_ = np.float64, np.complex128, np.str_
    # Not recbole.quick_start: it imports ray.tune, whose release RecBole 1.2.1 pulls in reads np.bool8 (gone in
    # numpy 2). The pieces quick_start would call need no ray. Only in the throwaway venv.
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    root = write_atomic(Path(args.out).resolve())
    os.chdir(root)  # RecBole's Trainer writes log_tensorboard/ under the working directory: keep it out of the checkout
    config = {
        "data_path": str(root),
        "checkpoint_dir": str(root / f"saved-s{args.seed}"),
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[5,inf)",
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["Recall", "NDCG"],
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "loss_type": "CE",
        "train_neg_sample_args": None,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "learning_rate": 0.002,
        "train_batch_size": args.batch_size,
        "epochs": args.epochs,
        "stopping_step": 5,
        "seed": args.seed,
        "device": "cpu",
        "use_gpu": False,
        "show_progress": False,
    }
    cfg = Config(model="SASRec", dataset="ml-100k-ours", config_dict=config)
    init_logger(cfg)  # per-epoch time and validation on stderr, and in ./log/ (under --out, see the chdir)
    init_seed(cfg["seed"], cfg["reproducibility"])
    train, valid, test_data = data_preparation(cfg, create_dataset(cfg))
    init_seed(cfg["seed"], cfg["reproducibility"])
    model = SASRec(cfg, train.dataset)
    trainer = Trainer(cfg, model)
    # RecBole reloads its best model with torch.load, whose weights_only=True (torch >= 2.6) refuses the config object
    # its checkpoint pickles, and we never unpickle: keep a copy of the weights in memory whenever it saves the best.
    best = {}
    save_checkpoint = trainer._save_checkpoint

    def keep_best(*save_args, **save_kwargs):
        best["state_dict"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best["other_parameter"] = model.other_parameter()
        return save_checkpoint(*save_args, **save_kwargs)

    trainer._save_checkpoint = keep_best
    trainer.fit(train, valid, saved=True, show_progress=False)
    model.load_state_dict(best["state_dict"])
    model.load_other_parameter(best["other_parameter"])
    test = {k: float(v) for k, v in trainer.evaluate(test_data, load_best_model=False).items()}
    print(json.dumps({"model": "recbole-sasrec", "seed": args.seed, "test": test}))


if __name__ == "__main__":
    main()
