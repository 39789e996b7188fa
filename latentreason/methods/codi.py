"""CODI (Shen et al. 2025): continuous CoT by self-distillation; one model is teacher and student.

- Teacher: question + CoT + answer, teacher-forced CE on CoT and answer. `teacher_drop_last_step`
  leaves the CoT's last step out, as the reference does for GSM8k-Aug (whose last step states the answer).
- Student: question <bot> [num_latents thoughts] <eot> answer; each thought is the projector (Dropout,
  Linear, GELU, Linear, LayerNorm) of the last hidden state before it; CE on the answer.
- Distillation: at the token that predicts the answer's first value token (the one before the number),
  every layer's student hidden state is pulled to the teacher's (detached): SmoothL1, divided by the std
  of the teacher's states at that layer (`distill_divide_std`), mean over layers.
- Loss = student CE + teacher_weight * teacher CE + distill_weight * distillation.
Changed from the reference: one grad-enabled teacher pass (the reference runs the teacher twice, once
without gradients for the targets: detaching gives the same targets); left padding masked and positions
from the mask in every call (the reference attends to pads in its latent calls, so a latent changes
with batch composition); the embedding layer is left out of the layer mean (the same token at the same
place in both passes: it always adds 0 and only scaled the mean by L / (L + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentreason.config import field
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.loss import next_token_loss
from latentreason.engine.rollout import fixed_latents
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, register_method
from latentreason.methods.coconut import identity_map
from latentreason.model.lora import add_lora
from latentreason.train_config import SFTConfig


@dataclass
class CODIConfig(SFTConfig):
    num_latents: int = field(6, help="continuous thoughts between <bot> and <eot> (the reference: 6)")
    use_projector: bool = field(True, help="map each hidden state through the MLP projector (false: feed it as is)")
    projector_size: int = field(0, help="inner width of the projector MLP (0 = the model's hidden size)")
    projector_dropout: float = field(0.0, help="dropout at the projector's input (the reference: 0)")
    distill_weight: float = field(20.0, help="weight of the hidden-state distillation (the reference: 20 for Llama)")
    distill_divide_std: bool = field(True, help="divide each layer's SmoothL1 by the std of the teacher's states")
    teacher_weight: float = field(1.0, help="weight of the teacher's CE on CoT + answer")
    teacher_drop_last_step: bool = field(True, help="leave the CoT's last step out of the teacher's text")
    lora_r: int = field(0, help="LoRA rank through peft (0 = full fine-tuning; the reference: 128)")
    lora_alpha: int = field(32, help="LoRA alpha (the reference: 32)")
    lora_dropout: float = field(0.1, help="dropout on the LoRA path (the reference: 0.1)")
    lora_target_modules: str = field(
        "all-linear", help="'all-linear' or comma-separated module names (e.g. q_proj,k_proj,v_proj,o_proj)"
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_latents < 1:
            raise ConfigError(f"field 'num_latents': must be >= 1, got {self.num_latents}")
        if self.projector_size < 0 or not 0.0 <= self.projector_dropout < 1.0:
            raise ConfigError("projector_size must be >= 0 and projector_dropout in [0, 1)")
        if self.distill_weight < 0 or self.teacher_weight < 0:
            raise ConfigError("distill_weight and teacher_weight must be >= 0")
        if self.lora_r < 0 or (self.lora_r and self.lora_alpha <= 0) or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_r must be >= 0 (0 = no LoRA), lora_alpha > 0 and lora_dropout in [0, 1)")


def distillation_loss(
    student_layers, student_at: torch.Tensor, teacher_layers, teacher_at: torch.Tensor, divide_std: bool = True
) -> torch.Tensor:
    """Mean over layers of SmoothL1(student, teacher) at one position per row, the teacher detached.

    *_layers: sequences of [B, L, d] (one per layer, same count); *_at: [B] the position in each row.
    """
    rows = torch.arange(student_at.shape[0], device=student_at.device)
    student = torch.stack([h[rows, student_at] for h in student_layers]).float()  # [layers, B, d]
    teacher = torch.stack([h[rows, teacher_at] for h in teacher_layers]).detach().float()  # [layers, B, d]
    per_layer = F.smooth_l1_loss(student, teacher, reduction="none").mean(dim=(1, 2))  # [layers]
    if divide_std:
        per_layer = per_layer / teacher.flatten(1).std(dim=1).clamp(min=1e-6)  # a constant layer must not give inf
    return per_layer.mean()


def answer_value_index(tokenizer, problem, answer_ids: list[int]) -> int:
    """Index in `answer_ids` ('### N' + eos) of N's first token, so index - 1 is the token predicting it."""
    value = len(tokenizer(str(problem.answer), add_special_tokens=False)["input_ids"])
    return min(max(len(answer_ids) - 1 - value, 0), len(answer_ids) - 1)


@register_method("codi")
class CODI(Method):
    config_cls = CODIConfig

    def resume_resets_optimizer(self) -> bool:
        return self.config.lora_r > 0

    def prepare(self, lm) -> None:
        cfg = self.config
        if cfg.lora_r:
            special = [lm.bot_id, lm.latent_id, lm.eot_id]
            add_lora(lm.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, special)
        if cfg.use_projector:
            self.projector_head(lm)

    def projector_head(self, lm):
        cfg = self.config
        return lm.add_head("projector", "projector", inner_size=cfg.projector_size, dropout=cfg.projector_dropout)

    def thought_map(self, lm):
        if not self.config.use_projector:
            return identity_map
        projector = self.projector_head(lm)

        def project(hidden, slot):
            return projector(hidden), None  # [B, d]

        return project

    def teacher_cot(self, enc) -> list[int]:
        if not (self.config.teacher_drop_last_step and enc.step_spans):
            return enc.cot
        if len(enc.step_spans) == 1:
            return []
        last_start, last_end = enc.step_spans[-1]
        return enc.cot[:last_start] + enc.cot[last_end:]  # keeps the closing newline

    def collate(self, lm, problems):
        prefixes, suffixes, labels, teacher, teacher_labels, student_at, teacher_from_end = ([] for _ in range(7))
        for problem in problems:
            enc = encode_problem(lm.tokenizer, problem)
            value = answer_value_index(lm.tokenizer, problem, enc.answer)
            prefixes.append(enc.prompt + [lm.bot_id])
            suffixes.append([lm.eot_id] + enc.answer)
            labels.append([IGNORE] + enc.answer)
            cot = self.teacher_cot(enc)
            teacher.append(enc.prompt + cot + enc.answer)
            teacher_labels.append([IGNORE] * len(enc.prompt) + cot + enc.answer)
            student_at.append(value)  # suffix = <eot> + answer: the token before answer[value]
            teacher_from_end.append(len(enc.answer) - value + 1)
        k = [self.config.num_latents] * len(problems)
        batch = build_latent_batch(prefixes, k, suffixes, labels, lm.pad_id)
        padded = left_pad(teacher, lm.pad_id, teacher_labels)  # [B, T]
        batch.extras.update(
            teacher_ids=padded["input_ids"],
            teacher_mask=padded["attention_mask"],
            teacher_positions=padded["position_ids"],
            teacher_labels=padded["labels"],
            student_at=torch.tensor(student_at),
            teacher_at=padded["input_ids"].shape[1] - torch.tensor(teacher_from_end),
        )
        return {"latent_batch": batch}

    def batch_tokens(self, batch) -> int:
        latent_batch = batch["latent_batch"]
        return latent_batch.num_tokens + int(latent_batch.extras["teacher_mask"].sum())

    def student_pass(self, lm, latent_batch):
        return latent_forward(lm, latent_batch, self.thought_map(lm), all_layers=True)

    def teacher_pass(self, lm, extras: dict, **outputs):
        """The teacher's call over question + CoT + answer; `outputs`: what else to ask the backbone for."""
        return lm.backbone(
            input_ids=extras["teacher_ids"],
            attention_mask=extras["teacher_mask"],
            position_ids=extras["teacher_positions"],
            output_hidden_states=True,
            **outputs,
        )

    def loss(self, lm, batch):
        latent_batch = batch["latent_batch"]
        student = self.student_pass(lm, latent_batch)
        teacher = self.teacher_pass(lm, latent_batch.extras).hidden_states  # layers + 1 of [B, T, d]
        return self.codi_objective(lm, latent_batch, student, teacher)

    def codi_objective(self, lm, latent_batch, student, teacher):
        """(student CE + teacher CE + distillation, metrics) from both passes' outputs (teacher: its hidden
        states, embeddings first)."""
        cfg, extras = self.config, latent_batch.extras
        student_ce, _ = next_token_loss(lm, student.suffix_hidden, latent_batch.suffix_labels)
        teacher_ce, _ = next_token_loss(lm, teacher[-1], extras["teacher_labels"])
        distill = distillation_loss(
            student.suffix_layers[1:], extras["student_at"], teacher[1:], extras["teacher_at"], cfg.distill_divide_std
        )
        total = student_ce + cfg.teacher_weight * teacher_ce + cfg.distill_weight * distill
        metrics = {"ce": student_ce, "teacher_ce": teacher_ce, "distill": distill}
        return total, {k: float(v.detach()) for k, v in metrics.items()}

    def solver(self, lm):
        k = self.config.num_latents
        return LatentSolver(lm, self.thought_map(lm), fixed_latents(k), k, self.config.max_new_tokens, name=self.name)
