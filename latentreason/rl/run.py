"""From an RL config to a finished run: the ATP-Latent or CoLaR SFT model (or a resumable checkpoint), data, trainer."""

from __future__ import annotations

from pathlib import Path

from latentreason.data.sources import load_train_and_held_out
from latentreason.errors import UserError
from latentreason.methods.saved import method_for
from latentreason.model.latent_lm import LatentLM
from latentreason.rl.config import RLConfig
from latentreason.rl.trainer import RLTrainer
from latentreason.training.checkpoint import resolve_resume
from latentreason.training.loop import TrainResult
from latentreason.training.processes import say


def run_rl(config: RLConfig, progress: bool = True, expected_method: str | None = None) -> TrainResult:
    """GRPO on `config.model_name_or_path`; a resumable checkpoint in output_dir takes precedence.

    expected_method: the SFT method the recipe was written for (its `method:` marker); another is refused.
    """
    resume = resolve_resume(Path(config.output_dir), config.resume_from_checkpoint, report=say)
    source = resume or config.model_name_or_path
    lm = LatentLM.from_pretrained(source)
    method = method_for(lm, str(source), max_new_tokens=config.max_new_tokens)
    if expected_method is not None and method.name != expected_method:
        raise UserError(f"this RL recipe is for {expected_method} models, but {source} was trained with {method.name}")
    train, held_out = load_train_and_held_out(config)
    return RLTrainer(config, method, lm, train, held_out, progress=progress, resume=resume).train()
