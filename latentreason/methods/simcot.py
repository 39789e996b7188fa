"""SIM-CoT (step-level supervision of implicit CoT): Coconut plus a step decoder.

During training only, a decoder reconstructs each replaced step's text from that step's c latents
(teacher-forced CE, weight `decoder_weight`); groups that correspond to no step (a stage beyond the
problem's steps) are trained to decode to end-of-sequence, and steps beyond the last group are
concatenated into it. Inference is Coconut's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.engine.latent_pass import latent_forward
from latentreason.engine.lockstep import agreed_any
from latentreason.errors import ConfigError
from latentreason.methods.base import next_token_loss, register_method
from latentreason.methods.coconut import Coconut, CoconutConfig
from latentreason.model.step_decoder import MODES, StepDecoder


@dataclass
class SIMCoTConfig(CoconutConfig):
    step_decoder: str = field("copy", help=f"where the step decoder's weights live: {', '.join(MODES)}")
    step_decoder_layers: int = field(2, help="layers of the 'small' step decoder")
    decoder_weight: float = field(1.0, help="weight of the step-reconstruction loss")
    max_step_tokens: int = field(48, help="step texts are cut to this many tokens (eos included)")

    def __post_init__(self):
        super().__post_init__()
        if self.step_decoder not in MODES:
            raise ConfigError(f"field 'step_decoder': expected one of {MODES}, got {self.step_decoder!r}")
        if self.max_step_tokens < 2 or self.step_decoder_layers < 1:
            raise ConfigError("max_step_tokens must be >= 2 and step_decoder_layers >= 1")


class StepSupervised(Coconut):
    """Coconut whose latent groups are also decoded back into their steps' text."""

    def prepare(self, lm) -> None:
        self.decoder = StepDecoder(lm, self.config.step_decoder, self.config.step_decoder_layers)

    def step_targets(self, lm, problem, removed: int, groups: int) -> list[list[int]]:
        """Target ids (text + eos) of each latent group of one problem."""
        cfg, eos = self.config, lm.eos_id
        texts = [problem.steps[g] if g < removed else "" for g in range(groups)]
        if groups and removed > groups:  # more replaced steps than groups: the last group holds the rest
            texts[-1] = " ".join(problem.steps[groups - 1 : removed])
        ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][: cfg.max_step_tokens - 1] for t in texts]
        return [t + [eos] for t in ids]

    def collate(self, lm, problems):
        rows = self.rows(lm, problems)
        batch = self.latent_batch(lm, rows)
        c = self.config.c_thought
        targets, row_ids, groups = [], [], []
        for row, (problem, (_, removed, latents)) in enumerate(zip(problems, rows)):
            for g, target in enumerate(self.step_targets(lm, problem, removed, latents // c)):
                targets.append(target)
                row_ids.append(row)
                groups.append(g)
        batch.extras.update(
            # True where the latent phase ends because the steps ran out (not because of the curriculum)
            all_steps_latent=torch.tensor([removed == len(enc.step_spans) for enc, removed, _ in rows]),
            step_targets=targets,
            step_rows=torch.tensor(row_ids, dtype=torch.long),
            step_groups=torch.tensor(groups, dtype=torch.long),
        )
        return {"latent_batch": batch}

    def decoder_loss(self, out, latent_batch) -> torch.Tensor:
        extras, c = latent_batch.extras, self.config.c_thought
        rows, groups, targets = extras["step_rows"], extras["step_groups"], extras["step_targets"]
        weight = 1.0
        if not targets:
            if not agreed_any(False):
                return out.suffix_hidden.sum() * 0.0
            # Another process decodes steps and the model is sharded per layer (engine/lockstep.py): decode
            # the first c thoughts of row 0 (masked slots here) into <eos> too, weighted 0, so that every
            # process runs the same graph.
            rows, groups, targets, weight = rows.new_zeros(1), groups.new_zeros(1), [[self.decoder.lm.eos_id]], 0.0
        else:
            agreed_any(True)
        slots = groups[:, None] * c + torch.arange(c, device=out.latent_inputs.device)  # [G, c]
        latents = out.latent_inputs[rows[:, None], slots]  # [G, c, d] one gather for all groups
        return self.decoder.loss(latents, targets)[0] * weight

    def training_thought_map(self, lm):
        return self.thought_map(lm)

    def forward_terms(self, lm, latent_batch):
        """The latent pass and the loss terms every step-supervised method shares."""
        out = latent_forward(lm, latent_batch, self.training_thought_map(lm))
        ce, _ = next_token_loss(lm, out.suffix_hidden, latent_batch.suffix_labels)
        return out, {"ce": ce, "decoder_ce": self.decoder_loss(out, latent_batch)}

    def loss(self, lm, batch):
        latent_batch = batch["latent_batch"]
        _, terms = self.forward_terms(lm, latent_batch)
        total = terms["ce"] + self.config.decoder_weight * terms["decoder_ce"]
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        metrics["latents"] = float(latent_batch.num_latents.float().mean())
        return total, metrics

    def solver(self, lm):
        self.prepare(lm)
        return super().solver(lm)


@register_method("simcot")
class SIMCoT(StepSupervised):
    config_cls = SIMCoTConfig
