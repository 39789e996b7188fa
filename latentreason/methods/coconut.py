"""Coconut (Hao et al. 2024): continuous thoughts = the last hidden state, fed back as the next input.

Curriculum as the reference: stage s = start_stage + epoch // epochs_per_stage. While s <=
max_latent_stage, the first s steps are replaced by s * c_thought latents (s * c even when a problem has
fewer steps); past the last stage every step is removed and max_latent_stage * c latents are used
(`pad_latent_to_max`) or min(steps, max_latent_stage) * c. The loss is the cross-entropy on the text
after <eot>. Training starts from a CoT-SFT checkpoint, as in the paper. At inference the number of
steps is unknown, so the solver uses max_latent_stage * c_thought latents. `curriculum: false` is the
paper's "w/o curriculum" ablation (every example at the final stage from the first step).
Changed from the reference: latents are computed on a KV cache, batched, positions from the mask.
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
from latentreason.train_config import SFTConfig


@dataclass
class CoconutConfig(SFTConfig):
    c_thought: int = field(1, help="latents per replaced reasoning step (GSM: 2, ProsQA: 1)")
    epochs_per_stage: int = field(1, help="epochs spent at each curriculum stage (GSM: 3)")
    max_latent_stage: int = field(3, help="last curriculum stage; past it every step is removed (GSM: 3)")
    start_stage: int = field(0, help="first stage (0 = CoT with the latent markers; 1 skips it)")
    pad_latent_to_max: bool = field(
        False, help="past the last stage use max_latent_stage * c latents even for shorter problems (GSM: true)"
    )
    uniform_prob: float = field(0.0, help="probability of training an example at a random earlier stage")
    reset_optimizer: bool = field(
        True, help="fresh AdamW state at each stage change (the reference's code resets at every epoch)"
    )
    curriculum: bool = field(
        True, help="false: Coconut's 'w/o curriculum' ablation, every example at the final stage from the first step"
    )

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
        # A fresh method is in its inference state (past the last stage); training walks the curriculum.
        self.stage = config.max_latent_stage + 1
        self.epoch = 0

    def stage_at(self, epoch: int) -> int:
        """The curriculum stage of `epoch`; every stage past the last one has the same layout, so they count as one."""
        cfg = self.config
        if not cfg.curriculum:
            return cfg.max_latent_stage + 1
        return min(cfg.start_stage + epoch // cfg.epochs_per_stage, cfg.max_latent_stage + 1)

    def start_epoch(self, epoch: int) -> bool:
        # The previous epoch's stage comes from the schedule, not from the last call: a resumed run (a
        # fresh method) must not reset where the uninterrupted run did not. The reference resets at every
        # epoch (run.py); we reset at a stage change, as its README describes (reproduction.md).
        stage = self.stage_at(epoch)
        reset = self.config.reset_optimizer and epoch > 0 and stage != self.stage_at(epoch - 1)
        self.stage, self.epoch = stage, epoch
        return reset

    def final_layout_step(self, steps_per_epoch: int) -> int:
        cfg = self.config
        if not cfg.curriculum:
            return 0
        return max(0, cfg.max_latent_stage + 1 - cfg.start_stage) * cfg.epochs_per_stage * steps_per_epoch

    def stage_for_example(self, problem) -> int:
        """The current stage, or with probability uniform_prob a random stage in [0, steps]; keyed on
        (seed, epoch, question) so a resumed run draws exactly what the uninterrupted run drew."""
        if self.config.uniform_prob <= 0:
            return self.stage
        rng = random.Random(zlib.crc32(f"{self.config.seed}|{self.epoch}|{problem.question}".encode()))
        return rng.randint(0, len(problem.steps)) if rng.random() < self.config.uniform_prob else self.stage

    def layout(self, stage: int, n_steps: int) -> tuple[int, int]:
        """(steps removed from the text, latent slots) for a problem with n_steps steps at `stage`."""
        cfg = self.config
        if stage <= cfg.max_latent_stage:
            return min(stage, n_steps), stage * cfg.c_thought
        groups = cfg.max_latent_stage if cfg.pad_latent_to_max else min(n_steps, cfg.max_latent_stage)
        return n_steps, groups * cfg.c_thought

    def rows(self, lm, problems) -> list[tuple]:
        """(encoded problem, steps removed from the text, latent slots) per problem."""
        out = []
        for problem in problems:
            enc = encode_problem(lm.tokenizer, problem)
            removed, latents = self.layout(self.stage_for_example(problem), len(enc.step_spans))
            out.append((enc, removed, latents))
        return out

    def collate(self, lm, problems):
        return {"latent_batch": self.latent_batch(lm, self.rows(lm, problems))}

    @staticmethod
    def suffix(lm, enc, removed: int) -> list[int]:
        """<eot>, the steps left as text, the answer."""
        remaining = enc.cot[enc.step_spans[removed][0] :] if removed < len(enc.step_spans) else []
        return [lm.eot_id] + remaining + enc.answer

    def latent_batch(self, lm, rows):
        prefixes, counts, suffixes, labels = [], [], [], []
        for enc, removed, latents in rows:
            suffix = self.suffix(lm, enc, removed)
            prefixes.append(enc.prompt + [lm.bot_id])
            counts.append(latents)
            suffixes.append(suffix)
            labels.append([IGNORE] + suffix[1:])  # nothing is predicted for <eot> itself
        return build_latent_batch(prefixes, counts, suffixes, labels, lm.pad_id)

    def thought_map(self, lm):
        return identity_map

    def batch_tokens(self, batch) -> int:
        return batch["latent_batch"].num_tokens

    def loss(self, lm, batch):
        latent_batch = batch["latent_batch"]
        out = latent_forward(lm, latent_batch, self.thought_map(lm))
        loss, _ = next_token_loss(lm, out.suffix_hidden, latent_batch.suffix_labels)
        return loss, {"ce": float(loss.detach()), "latents": float(latent_batch.num_latents.float().mean())}

    def inference_latents(self) -> int:
        return self.layout(self.stage, self.config.max_latent_stage)[1]

    def solver(self, lm):
        k = self.inference_latents()
        return LatentSolver(lm, self.thought_map(lm), fixed_latents(k), k, self.config.max_new_tokens, name=self.name)
