"""ATP-Latent SFT (Active Latent Planning, arXiv 2601.21598): latents supervised as a conditional VAE.

- Latent head: the hidden state before slot j goes through a Gaussian head (MLP + LayerNorm, then mean
  and log-variance); the thought fed at slot j is z = mean + exp(logvar / 2) * eps while training and
  the mean at evaluation (sampling is an option: `eval_sample_latents`).
- Stop head: on z at the first latent of each c_thought group, continue (0) or stop (1). Trained only
  at group starts: "continue" for every group a problem uses, "stop" for the group right after its
  last step once all its steps are latent (fixes the reference, which applies it at every latent).
  At inference the rollout stops a row at the first group start whose argmax is "stop" (or after
  max_latent_stage groups), and the loop exits when every row has stopped (the reference always runs
  all 20 latent passes). ATPActions holds this rule; `latentreason rl` samples it.
- Step decoder: reconstructs each step's text from that step's c latents alone (see SIM-CoT).
- Loss = CE(text after latents) + kl_weight * KL(N(mean, var) || N(0, I)) (mean over used latents and
  dimensions) + decoder_weight * decoder CE + stop_weight * stop CE.
- Curriculum: Coconut's, except that groups beyond a problem's steps are not used (masked): the stop head
  ends the thinking instead of padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentreason.config import field
from latentreason.engine.batch import IGNORE
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.methods.base import register_method
from latentreason.methods.latent_actions import CONTINUE, STOP, LatentActions
from latentreason.methods.simcot import SIMCoTConfig, StepSupervised


@dataclass
class ATPConfig(SIMCoTConfig):
    c_thought: int = field(2, help="latents per reasoning step (the reference uses 2)")
    max_latent_stage: int = field(10, help="most step groups (the reference: 10, i.e. up to 20 latents)")
    epochs_per_stage: int = field(2, help="epochs per curriculum stage (the reference uses 2)")
    kl_weight: float = field(0.001, help="weight of KL(N(mean, var) || N(0, I)) (the reference uses 0.001)")
    stop_weight: float = field(1.0, help="weight of the stop head's cross-entropy")
    eval_sample_latents: bool = field(False, help="sample latents at evaluation instead of using the mean")
    eval_sample_stop: bool = field(False, help="sample stop decisions at evaluation instead of the argmax")


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per dimension. [.., d] -> [.., d]."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


class ATPActions(LatentActions):
    """Prompt `question <bot>`; z is fed as drawn; the stop head decides on z at the first slot of every
    c_thought group, and thinking ends after max_latent_stage groups."""

    stop_reads_latent = True

    def __init__(self, lm, method: ATPLatent):
        cfg = method.config
        super().__init__(lm, method.latent_head, cfg.max_latent_stage * cfg.c_thought)
        self.group, self.stop_head = cfg.c_thought, method.stop_head

    def stop_logits(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.stop_head(z).float()  # [.., 2]


@register_method("atp")
class ATPLatent(StepSupervised):
    config_cls = ATPConfig
    latent_actions = ATPActions

    def prepare(self, lm) -> None:
        super().prepare(lm)
        self.latent_head = lm.add_head("latent_head", "gaussian")
        self.stop_head = lm.add_head("stop_head", "stop")

    def layout(self, stage: int, n_steps: int) -> tuple[int, int]:
        groups = min(stage, n_steps, self.config.max_latent_stage)
        removed = n_steps if stage > self.config.max_latent_stage else groups
        return removed, groups * self.config.c_thought

    def gaussian_map(self, sample: bool, generator: torch.Generator | None = None):
        def thought(hidden, slot):
            mean, logvar = self.latent_head(hidden)  # [B, d], [B, d]
            if not sample:
                return mean, (mean, logvar)
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            return mean + (0.5 * logvar).exp() * noise, (mean, logvar)

        return thought

    def training_thought_map(self, lm):
        return self.gaussian_map(sample=True)

    def thought_map(self, lm):
        return self.gaussian_map(sample=self.config.eval_sample_latents)

    def stop_loss(self, out, latent_batch) -> torch.Tensor:
        """Stop CE at every group start a row reaches: continue inside its steps, stop right after them."""
        c = self.config.c_thought
        # The batch's own slots: under lockstep the pass may run more (masked), and sampling for those would
        # draw other noise than a process that did not run them.
        n = latent_batch.max_latents
        before = torch.cat([out.bot_hidden[:, None], out.latent_hidden], dim=1)[:, : n + 1]  # [B, n+1, d]
        starts = torch.arange(0, n + 1, c, device=before.device)  # [G+1] first slot of each group
        z = self.gaussian_map(sample=True)(before[:, starts], 0)[0]  # [B, G+1, d]
        logits = self.stop_head(z)  # [B, G+1, 2]
        used = (latent_batch.num_latents // c)[:, None]  # [B, 1] groups each row uses
        group = torch.arange(len(starts), device=before.device)[None]  # [1, G+1]
        labels = torch.full_like(group.expand_as(logits[..., 0]), IGNORE)  # [B, G+1]
        labels = torch.where(group < used, CONTINUE, labels)
        # "Stop" right after the last step, when the steps ran out; at an earlier curriculum stage the
        # text continues there instead, and after the last allowed group thinking ends anyway.
        ends = latent_batch.extras["all_steps_latent"][:, None] & (used < self.config.max_latent_stage)  # [B, 1]
        labels = torch.where((group == used) & ends, STOP, labels)
        if not (labels != IGNORE).any():  # stage 0 (no latents): nothing to decide; CE of nothing is NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, 2).float(), labels.reshape(-1), ignore_index=IGNORE)

    def loss(self, lm, batch):
        cfg, latent_batch = self.config, batch["latent_batch"]
        out, terms = self.forward_terms(lm, latent_batch)
        if out.map_outputs:
            mean = torch.stack([m for m, _ in out.map_outputs], dim=1)  # [B, N, d]
            logvar = torch.stack([v for _, v in out.map_outputs], dim=1)  # [B, N, d]
            per_slot = gaussian_kl(mean, logvar).mean(-1)  # [B, N]
            mask = out.slot_mask.to(per_slot.dtype)
            terms["kl"] = (per_slot * mask).sum() / mask.sum().clamp(min=1)
        else:
            terms["kl"] = out.suffix_hidden.sum() * 0.0
        terms["stop_ce"] = self.stop_loss(out, latent_batch)
        total = (
            terms["ce"]
            + cfg.kl_weight * terms["kl"]
            + cfg.decoder_weight * terms["decoder_ce"]
            + cfg.stop_weight * terms["stop_ce"]
        )
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        metrics["latents"] = float(latent_batch.num_latents.float().mean())
        return total, metrics

    def solver(self, lm):
        self.prepare(lm)
        actions = self.latent_actions(lm, self)
        stop = actions.controller(sample=self.config.eval_sample_stop)
        return LatentSolver(
            lm, self.thought_map(lm), stop, actions.max_latents, self.config.max_new_tokens, name=self.name
        )
