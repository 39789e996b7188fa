"""From an RM config to a finished run: the rated latent model, labelled questions, the reward model (a copy
of that model with a score head, or a resumable checkpoint), the trainer."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from latentreason.data.sources import load_train_and_held_out
from latentreason.errors import ConfigError, UserError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.methods.saved import method_for
from latentreason.model.latent_lm import LatentLM
from latentreason.processes import say
from latentreason.training.checkpoint import resolve_resume
from latentreason.training.loop import TrainResult
from latentreason.tts.reward_model import LatentRM
from latentreason.tts.rm_config import RMConfig
from latentreason.tts.rm_labels import answer_judge, label_questions
from latentreason.tts.rm_trainer import RMTrainer
from latentreason.tts.samplers import latent_sampler_from_args


def run_train_rm(config: RMConfig, progress: bool = True) -> TrainResult:
    policy = LatentLM.from_pretrained(config.model_name_or_path).eval()
    method = method_for(policy, config.model_name_or_path, max_new_tokens=config.max_new_tokens)
    solver = method.solver(policy)
    if not isinstance(solver, LatentSolver):
        raise UserError(f"{config.model_name_or_path}: trained with '{method.name}', which has no latent thoughts")
    try:
        sampler = latent_sampler_from_args(config.latent_sampler, config.latent_sampler_args).for_method(method.name)
    except ConfigError as err:
        raise ConfigError(f"latent_sampler_args: {err}") from None
    train, held_out = load_train_and_held_out(config)
    labels, judge = config.label_config(), answer_judge(config.answer_mode)
    with torch.no_grad():
        batch = config.eval_batch_size
        bars = ("label training questions", "label held-out questions") if progress else (None, None)
        train_labels, dropped = label_questions(solver, train, sampler, labels, judge, batch, progress=bars[0])
        held_out_labels, held_out_dropped = label_questions(
            solver, held_out, sampler, labels, judge, batch, False, progress=bars[1]
        )
    say(
        f"labelled {len(train_labels)} training and {len(held_out_labels)} held-out questions; dropped {dropped} and "
        f"{held_out_dropped} whose {labels.trajectories} trajectories were all right or all wrong"
    )
    resume = resolve_resume(Path(config.output_dir), config.resume_from_checkpoint, report=say)
    rm = LatentRM(LatentLM.from_pretrained(resume) if resume is not None else copy.deepcopy(policy))
    trainer = RMTrainer(config, method, rm, train_labels, held_out_labels, progress=progress, resume=resume)
    return trainer.train()
