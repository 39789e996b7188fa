"""KaVa (Kuzina et al. 2025, arXiv 2510.02312): PCCoT's Jacobi thoughts, taught by the teacher's compressed
KV cache as well as by CODI's hidden-state distillation.

- Teacher and student are CODI's (one model): the teacher reads question + CoT + answer, the student
  question <bot> [M thoughts] <eot> answer, its M thoughts found by Jacobi iteration (as PCCoT).
- The teacher's CoT cache is compressed to M tokens per layer and KV head (methods/kava_eviction.py:
  attention from the answer tokens plus key diversity, weighted by `eviction_lambda`).
- The student's keys and values at its M latent slots are pulled to the kept teacher ones (detached),
  slot m to the m-th kept token: SmoothL1 or MSE (`kv_loss`), divided by the teacher's std at that layer
  (`kv_divide_std`), mean over layers and over keys and values.
- Loss = student CE + teacher_weight * teacher CE + distill_weight * CODI distillation + kv_weight * KV loss.
Choices where the paper is silent (docs/methods.md): keys are matched before RoPE (the teacher's CoT
tokens and the student's latents sit at different positions; rotated keys would ask the student to
reproduce a position offset rather than content); the teacher's attention comes from one eager call
(sdpa never forms the probabilities); rows whose CoT has fewer than M tokens leave the extra slots
unmatched. Inference is PCCoT's Jacobi solver: the KV targets only shape training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentreason.config import field
from latentreason.engine.batch import positions_from_mask
from latentreason.engine.compat import cache_kwargs
from latentreason.engine.forward import new_cache
from latentreason.engine.jacobi import jacobi_latent_forward
from latentreason.errors import ConfigError
from latentreason.layout import encode_problem
from latentreason.methods.base import register_method
from latentreason.methods.kava_eviction import compress_layer
from latentreason.methods.pccot import PCCoT, PCCoTConfig
from latentreason.model.attention_access import eager_attention, unrotated_keys

KV_LOSSES = {"smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss}


@dataclass
class KaVaConfig(PCCoTConfig):
    distill_weight: float = field(10.0, help="alpha1: weight of CODI's hidden-state distillation (the issue: 10)")
    kv_weight: float = field(1.0, help="alpha2: weight of the KV-cache matching loss (the issue: 1)")
    eviction_lambda: float = field(
        0.1, help="lambda of the eviction score lambda * importance + (1 - lambda) * redundancy (the issue: 0.1)"
    )
    kv_loss: str = field("smooth_l1", help="distance between student and teacher keys/values: smooth_l1 or mse")
    kv_divide_std: bool = field(True, help="divide each layer's key (value) loss by the std of the teacher's kept ones")

    def __post_init__(self):
        super().__post_init__()
        if self.kv_weight < 0:
            raise ConfigError(f"field 'kv_weight': must be >= 0, got {self.kv_weight}")
        if not 0.0 <= self.eviction_lambda <= 1.0:
            raise ConfigError(f"field 'eviction_lambda': must be in [0, 1], got {self.eviction_lambda}")
        if self.kv_loss not in KV_LOSSES:
            raise ConfigError(f"field 'kv_loss': expected one of {sorted(KV_LOSSES)}, got {self.kv_loss!r}")


def kv_matching_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], valid: list[torch.Tensor], kind: str, divide_std: bool
) -> torch.Tensor:
    """Mean over the pairs of the per-slot distance between student and (detached) teacher states.

    student, teacher: aligned lists of [B, H, M, D] (one per layer for keys, one for values);
    valid: matching [B, H, M] bools, the slots that have a teacher token. Each pair's loss is the mean
    over valid slots and D, divided by the std of its valid teacher entries when `divide_std`.
    """
    distance, terms = KV_LOSSES[kind], []
    for mine, target, keep in zip(student, teacher, valid):
        target = target.detach().float()
        per_slot = distance(mine.float(), target, reduction="none").mean(-1)  # [B, H, M]
        term = (per_slot * keep).sum() / keep.sum().clamp(min=1)
        matched = target[keep]  # [n, D] the teacher entries the slots are pulled to
        if divide_std and matched.numel() > 1:
            term = term / matched.std().clamp(min=1e-6)  # a constant layer must not give inf
        terms.append(term)
    return torch.stack(terms).mean()


@register_method("kava")
class KaVa(PCCoT):
    config_cls = KaVaConfig

    def collate(self, lm, problems):
        batch = super().collate(lm, problems)
        extras = batch["latent_batch"].extras
        cot_mask = torch.zeros_like(extras["teacher_mask"], dtype=torch.bool)  # [B, T]
        answer_mask = torch.zeros_like(cot_mask)
        length = cot_mask.shape[1]
        for row, problem in enumerate(problems):  # the teacher's row is left-padded prompt + CoT + answer
            enc = encode_problem(lm.tokenizer, problem)
            answer_start = length - len(enc.answer)
            answer_mask[row, answer_start:] = True
            cot_mask[row, answer_start - len(self.teacher_cot(enc)) : answer_start] = True
        extras.update(cot_mask=cot_mask, answer_mask=answer_mask)
        return batch

    def loss(self, lm, batch):
        cfg, latent_batch = self.config, batch["latent_batch"]
        student_cache, teacher_cache = new_cache(lm), new_cache(lm)
        thought_map = self.thought_map(lm)
        student = jacobi_latent_forward(
            lm, latent_batch, thought_map, cfg.jacobi_iterations, all_layers=True, cache=student_cache
        )
        with eager_attention(lm.model):
            teacher = self.teacher_pass(
                lm,
                latent_batch.extras,
                output_attentions=True,
                use_cache=True,
                **cache_kwargs(lm.backbone, teacher_cache),
            )
        if not teacher.attentions or teacher.attentions[0] is None:
            raise ConfigError(
                f"method 'kava': {type(lm.model).__name__} returned no attention probabilities under eager "
                "attention; KaVa's eviction needs a model whose attention implementation can be set to 'eager'"
            )
        total, metrics = self.codi_objective(lm, latent_batch, student, teacher.hidden_states)
        kv = self.kv_loss(lm, latent_batch, student_cache, teacher_cache, teacher.attentions)
        metrics["kv"] = float(kv.detach())
        return total + cfg.kv_weight * kv, metrics

    def kv_loss(self, lm, latent_batch, student_cache, teacher_cache, attentions) -> torch.Tensor:
        """The KV matching loss from both passes' caches and the teacher's attention probabilities."""
        student = self.student_slot_states(lm, latent_batch, student_cache)
        with torch.no_grad():
            teacher, valid = self.teacher_kept_states(lm, latent_batch, teacher_cache, attentions)
        return kv_matching_loss(student, teacher, valid, self.config.kv_loss, self.config.kv_divide_std)

    def student_slot_states(self, lm, latent_batch, cache) -> list[torch.Tensor]:
        """[keys before RoPE, values] of every layer at the latent slots, each [B, Hkv, M, D]."""
        slots, start = self.config.num_latents, latent_batch.prefix_ids.shape[1]  # the cache: prefix, slots, suffix
        mask = torch.cat([latent_batch.prefix_mask, latent_batch.slot_mask(slots).long()], dim=1)
        positions = positions_from_mask(mask)[:, start:]  # [B, M]
        states = []
        for layer in cache.layers:
            keys = unrotated_keys(lm.backbone, layer.keys[:, :, start : start + slots], positions)
            states += [keys, layer.values[:, :, start : start + slots]]
        return states

    def teacher_kept_states(self, lm, latent_batch, cache, attentions) -> tuple[list, list]:
        """([kept keys before RoPE, kept values] of every layer, each [B, Hkv, M, D]; their valid [B, Hkv, M])."""
        cfg, extras = self.config, latent_batch.extras
        states, valid = [], []
        for layer, attention in zip(cache.layers, attentions):
            keys, values, kept = compress_layer(
                lm.backbone,
                layer.keys,
                layer.values,
                attention,
                extras["teacher_positions"],
                extras["cot_mask"],
                extras["answer_mask"],
                cfg.eviction_lambda,
                cfg.num_latents,
            )
            states += [keys, values]
            valid += [kept, kept]
        return states, valid
