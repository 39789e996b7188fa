"""From a config to a finished run: data, model (fresh or resumed), method, trainer."""

from __future__ import annotations

from pathlib import Path

from latentreason.data.sources import load_train_and_held_out
from latentreason.layout import encode_problem
from latentreason.methods import get_method
from latentreason.model.latent_lm import LatentLM
from latentreason.processes import say
from latentreason.training.checkpoint import resolve_resume
from latentreason.training.loop import TrainResult
from latentreason.training.trainer import Trainer


def fits(lm, problem, max_len: int) -> bool:
    enc = encode_problem(lm.tokenizer, problem)
    return len(enc.prompt) + len(enc.cot) + len(enc.answer) <= max_len


def run_training(method_name: str, config, progress: bool = True, lm: LatentLM | None = None) -> TrainResult:
    """Train `method_name` as `config` says; a resumable checkpoint in output_dir takes precedence."""
    method = get_method(method_name)(config)
    train, held_out = load_train_and_held_out(config)
    resume = resolve_resume(Path(config.output_dir), config.resume_from_checkpoint, report=say)
    if resume is not None:
        lm = LatentLM.from_pretrained(resume)
    elif lm is None:
        lm = method.build_lm(config, train)
    kept = [p for p in train if fits(lm, p, config.max_seq_length)]
    if len(kept) < len(train):
        say(
            f"dropped {len(train) - len(kept)} of {len(train)} training examples longer than "
            f"max_seq_length={config.max_seq_length}"
        )
    trainer = Trainer(config, method, lm, kept, held_out, progress=progress, resume=resume)
    return trainer.train()
