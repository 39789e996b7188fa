"""Coconut (Hao et al. 2024): continuous thoughts = the last hidden state, fed back as the next input.

Curriculum: at stage s the first s reasoning steps are replaced by s * c_thought latents; the loss is
the cross-entropy on the text after <eot> (remaining steps and answer). Training starts from a CoT-SFT
checkpoint, as in the paper. Kept from the reference: stage = epoch // epochs_per_stage (capped at
max_latent_stage), pad_latent_to_max, optional random-stage mixing and optimizer reset per stage.
Changed: latents are computed on a KV cache, batched, with positions from the attention mask.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from latentreason.config import field
from latentreason.engine.batch import IGNORE
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.rollout import fixed_latents
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, next_token_loss, register_method
from latentreason.training.config import TrainConfig


@dataclass
class CoconutConfig(TrainConfig):
    c_thought: int = field(1, help="latents per replaced reasoning step (GSM: 2, ProsQA: 1)")
    epochs_per_stage: int = field(1, help="epochs spent at each curriculum stage (GSM: 3)")
    max_latent_stage: int = field(3, help="last stage: at most this many steps become latents (GSM: 3)")
    start_stage: int = field(0, help="first stage (0 = CoT with the latent markers; 1 skips it)")
    pad_latent_to_max: bool = field(
        False, help="always use stage * c_thought latents, even when a problem has fewer steps (GSM: true)"
    )
    uniform_prob: float = field(0.0, help="probability of training an example at a random earlier stage")
    reset_optimizer: bool = field(True, help="fresh AdamW state at each stage change (the reference resets)")

    def __post_init__(self):
        super().__post_init__()
        if self.c_thought < 1 or self.epochs_per_stage < 1 or self.max_latent_stage < 0:
            raise ConfigError("c_thought and epochs_per_stage must be >= 1 and max_latent_stage >= 0")
        if not 0 <= self.start_stage <= self.max_latent_stage:
            raise ConfigError(f"start_stage must lie in [0, max_latent_stage={self.max_latent_stage}]")
        if not 0.0 <= self.uniform_prob <= 1.0:
            raise ConfigError(f"uniform_prob must lie in [0, 1], got {self.uniform_prob}")


def identity_map(hidden, slot):
    return hidden, None


@register_method("coconut")
class Coconut(Method):
    config_cls = CoconutConfig

    def __init__(self, config: CoconutConfig):
        super().__init__(config)
        # A fresh method is in its inference state (the last stage); training walks the curriculum.
        self.stage = config.max_latent_stage
        self.epoch = 0

    def start_epoch(self, epoch: int) -> bool:
        cfg = self.config
        stage = min(cfg.start_stage + epoch // cfg.epochs_per_stage, cfg.max_latent_stage)
        reset = cfg.reset_optimizer and epoch > 0 and stage != self.stage
        self.stage, self.epoch = stage, epoch
        return reset

    def stage_for_example(self, problem) -> int:
        """The current stage, or with probability uniform_prob a random one; keyed on (seed, epoch,
        question) so a resumed run draws exactly what the uninterrupted run drew."""
        if self.config.uniform_prob <= 0:
            return self.stage
        key = zlib.crc32(f"{self.config.seed}|{self.epoch}|{problem.question}".encode())
        rng = random.Random(key)
        return rng.randint(0, self.config.max_latent_stage) if rng.random() < self.config.uniform_prob else self.stage

    def num_latents(self, stage: int, n_steps: int) -> int:
        replaced = stage if self.config.pad_latent_to_max else min(stage, n_steps)
        return replaced * self.config.c_thought

    def collate(self, lm, problems):
        prefixes, counts, suffixes, labels = [], [], [], []
        for problem in problems:
            enc = encode_problem(lm.tokenizer, problem)
            stage = self.stage_for_example(problem)
            n_steps = len(enc.step_spans)
            remaining = enc.cot[enc.step_spans[stage][0] :] if stage < n_steps else []
            suffix = [lm.eot_id] + remaining + enc.answer
            prefixes.append(enc.prompt + [lm.bot_id])
            counts.append(self.num_latents(stage, n_steps))
            suffixes.append(suffix)
            labels.append([IGNORE] + suffix[1:])  # nothing is predicted for <eot> itself
        return {"latent_batch": build_latent_batch(prefixes, counts, suffixes, labels, lm.pad_id)}

    def thought_map(self, lm):
        return identity_map

    def batch_tokens(self, batch) -> int:
        return batch["latent_batch"].num_tokens

    def loss(self, lm, batch):
        latent_batch = batch["latent_batch"]
        out = latent_forward(lm, latent_batch, self.thought_map(lm))
        loss, count = next_token_loss(lm, out.suffix_hidden, latent_batch.suffix_labels)
        return loss, {"ce": float(loss.detach()), "latents": float(latent_batch.num_latents.float().mean())}

    def solver(self, lm):
        k = self.stage * self.config.c_thought
        return LatentSolver(lm, self.thought_map(lm), fixed_latents(k), k, self.config.max_new_tokens, name=self.name)
