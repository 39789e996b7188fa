"""From a recommendation config to a finished run: data, split, model (fresh or resumed), training with
early stopping on validation, then the test metrics of the best model (output_dir/test_metrics.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate.utils import set_seed

from latentreason.errors import UserError
from latentreason.processes import say
from latentreason.rec.config import RecConfig
from latentreason.rec.data import read_interactions, resolve_dataset
from latentreason.rec.evaluate import rank_split
from latentreason.rec.model import Recommender
from latentreason.rec.split import LeaveOneOut
from latentreason.rec.trainer import BEST_DIR, RecTrainer
from latentreason.training.checkpoint import resolve_resume

TEST_FILE = "test_metrics.json"


@dataclass
class RecResult:
    best_dir: Path
    global_step: int
    valid: dict  # the best model's validation metrics (what selected it)
    test: dict


def load_split(dataset: str, min_user_interactions: int, max_len: int) -> LeaveOneOut:
    data = read_interactions(resolve_dataset(dataset), min_user_interactions)
    say(
        f"{data.source}: {len(data.sequences)} users, {data.num_items} items, {data.num_interactions} interactions "
        f"({data.dropped_users} users with fewer than {min_user_interactions} dropped)"
    )
    return LeaveOneOut.of(data, max_len)


def split_for(model: Recommender, dataset: str | None = None) -> LeaveOneOut:
    """The split a saved model was trained on (or the same split of `dataset`), checked against its items."""
    recorded = model.meta.get("data", {})
    name = dataset or recorded.get("dataset")
    if name is None:
        raise UserError("the model records no data set: pass --data")
    split = load_split(name, recorded.get("min_user_interactions", 5), model.config.max_seq_length)
    if split.num_items != model.num_items:
        raise UserError(f"{name}: {split.num_items} items, but the model ranks {model.num_items}")
    return split


def run_rec_training(config: RecConfig, progress: bool = True) -> RecResult:
    split = load_split(config.dataset, config.min_user_interactions, config.max_seq_length)
    resume = resolve_resume(Path(config.output_dir), config.resume_from_checkpoint, report=say)
    if resume is not None:
        model = Recommender.from_pretrained(resume)
    else:
        set_seed(config.seed)  # the initial weights are the seed's
        model = Recommender(config.model_settings(), split.num_items)
    model.meta["data"] = {"dataset": config.dataset, "min_user_interactions": config.min_user_interactions}
    model.meta["rec_config"] = asdict(config)
    trained = RecTrainer(config, model, split, progress=progress, resume=resume).train()
    best = Path(config.output_dir) / BEST_DIR
    if not best.is_dir():
        raise UserError(f"{config.output_dir}: no validation ran, so no model was selected (set eval_steps)")
    selected = Recommender.from_pretrained(best)
    test = rank_split(selected, split, "test", config.eval_batch_size)
    valid = {k: v for k, v in selected.meta["selected"].items() if k != "step"}
    record = {"model": config.model, "seed": config.seed, "best_step": selected.meta["selected"]["step"]}
    (Path(config.output_dir) / TEST_FILE).write_text(json.dumps({**record, "valid": valid, "test": test}, indent=2))
    return RecResult(best, trained.global_step, valid, test)
