"""From an RL config to a finished run: the ATP-Latent, CoLaR or text method's (cot, icot, no-cot) SFT model or a
pretrained chat model (or a resumable checkpoint), data, trainer."""

from __future__ import annotations

from pathlib import Path

from latentreason.data.sources import load_train_and_held_out
from latentreason.errors import UserError
from latentreason.methods.saved import method_for
from latentreason.model.latent_lm import LatentLM
from latentreason.model.lora import add_lora
from latentreason.model.pretrained import PRETRAINED, load_pretrained, model_kind
from latentreason.processes import say
from latentreason.rl.config import RLConfig
from latentreason.rl.trainer import RLTrainer
from latentreason.training.checkpoint import resolve_resume
from latentreason.training.loop import TrainResult


def run_rl(config: RLConfig, progress: bool = True, expected_method: str | None = None) -> TrainResult:
    """GRPO on `config.model_name_or_path`; a resumable checkpoint in output_dir takes precedence.

    expected_method: the SFT method the recipe was written for (its `method:` marker); another is refused.
    """
    resume = resolve_resume(Path(config.output_dir), config.resume_from_checkpoint, report=say)
    source = str(resume or config.model_name_or_path)
    if model_kind(source) == PRETRAINED:
        # A chat model as it is (no latent tokens); its RL policy thinks in tokens (rl/token_policy.py).
        lm, method, trained_with = load_pretrained(source), None, PRETRAINED
    else:
        lm = LatentLM.from_pretrained(source)
        method = method_for(lm, source, max_new_tokens=config.max_new_tokens)
        trained_with = method.name
    if expected_method is not None and trained_with != expected_method:
        raise UserError(f"this RL recipe is for {expected_method} models, but {source} is {trained_with}")
    if config.lora_r:
        # Sampled and recomputed log-probs must agree, so the adapters have no dropout.
        add_lora(lm.model, config.lora_r, config.lora_alpha, 0.0, config.lora_target_modules)
    train, held_out = load_train_and_held_out(config)
    return RLTrainer(config, method, lm, train, held_out, progress=progress, resume=resume).train()
