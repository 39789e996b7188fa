"""System-1.5 Reasoning (Wang et al. 2025, arXiv 2505.18962): latent thoughts with dynamic shortcuts.

Thoughts are Coconut's (the last hidden state fed back, `num_latents` of them); the `shortcut` head adds a
router and an adapter per decoder layer (depth shortcut) and one pair over whole latent steps (step shortcut).
One run trains both stages of the paper's self-distillation; the first `distill_steps` optimizer steps are
stage 1, the optimizer state is reset when stage 2 starts.

- Stage 1 (language CoT -> latent thoughts): a teacher pass over question + CoT + answer (the same model, CE
  on CoT and answer) and the student's latent pass (CE on the answer); thought (k + 1) x c_thought - 1 is
  pulled to the teacher's state at the last token of CoT step k (SmoothL1 / the teacher's std, CODI's form).
- Stage 2 (full path -> shortcut path): the full path (no shortcut; its answer CE trains it, its states are
  the targets) and the shortcut path, where every layer's output at a thought's position is
  w x adapter(h) + (1 - w) x layer(h) (engine/depth_shortcut.py) and every thought is
  s x step_adapter(z) + (1 - s) x (the step's output), s = step_router(z) of the step's input z. The shortcut
  path's thoughts are pulled to the full path's, and each router-adapter pair is supervised on the full path:
  the adapter towards where the full path lands (for a layer: its final state, read after the final norm as
  an exit's is; for a step: the step's output), the router towards 1 where its adapter already lands within
  the tolerance (methods/system15_losses.py).
- Inference (evaluation/shortcut_solver.py): a thought's position exits at the first layer whose w exceeds
  `lambda_depth`; a step whose s exceeds `lambda_step` is skipped: its position passes every layer unchanged
  and the next thought is step_adapter(z) instead of the model's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.engine.depth_shortcut import DepthShortcut, frozen_final_norm
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.loss import next_token_loss
from latentreason.errors import ConfigError
from latentreason.evaluation.shortcut_solver import ShortcutSolver
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, register_method
from latentreason.methods.coconut import identity_map
from latentreason.methods.system15_losses import shortcut_supervision, state_match_loss
from latentreason.train_config import SFTConfig

HEAD = "shortcut"  # the head holding the routers and adapters (saved with the model)


@dataclass
class System15Config(SFTConfig):
    num_latents: int = field(6, help="latent steps per problem (each a continuous thought, as Coconut's)")
    c_thought: int = field(2, help="thoughts per CoT step: thought (k + 1) x c_thought - 1 is matched to step k's end")
    distill_steps: int = field(
        250,
        help="optimizer steps of stage 1 (CoT -> latent thoughts), the rest are stage 2 (full path -> shortcuts); "
        ">= max_steps trains stage 1 only, 0 only stage 2 (from a stage-1 model)",
    )
    distill_weight: float = field(1.0, help="stage 1: weight of pulling thoughts to the CoT teacher's step-end states")
    teacher_weight: float = field(1.0, help="stage 1: weight of the teacher's CE on CoT + answer")
    distill_divide_std: bool = field(True, help="divide each matching loss by the std of the teacher's states")
    full_path_weight: float = field(1.0, help="stage 2: weight of the full path's answer CE (the path is the teacher)")
    match_weight: float = field(1.0, help="stage 2: weight of pulling the shortcut path's thoughts to the full path's")
    router_weight: float = field(1.0, help="stage 2: weight of the routers' binary cross-entropy")
    adapter_weight: float = field(1.0, help="stage 2: weight of the adapters' squared relative error")
    exit_tolerance: float = field(
        0.2,
        help="stage 2: a layer's router target is 1 where exiting through its adapter lands within this relative "
        "error of the full path's final state (after the final norm)",
    )
    skip_tolerance: float = field(
        0.2, help="stage 2: the step router's target is 1 where the step adapter lands within this relative error"
    )
    adapter_size: int = field(0, help="inner width of every adapter (0 = hidden_size / 4)")
    router_bias: float = field(-2.0, help="every router's initial bias: w starts at sigmoid(router_bias)")
    lambda_depth: float = field(
        0.5, help="inference: a thought exits at the first layer whose router w > lambda_depth (1: never)"
    )
    lambda_step: float = field(
        0.5, help="inference: a latent step is skipped when its step router's s > this (1: never)"
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_latents < 1 or self.c_thought < 1 or self.distill_steps < 0 or self.adapter_size < 0:
            raise ConfigError("num_latents and c_thought must be >= 1, distill_steps and adapter_size >= 0")
        weights = ("distill_weight", "teacher_weight", "full_path_weight", "match_weight", "router_weight")
        for name in (*weights, "adapter_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"field '{name}': must be >= 0, got {getattr(self, name)}")
        for name in ("exit_tolerance", "skip_tolerance"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"field '{name}': must be > 0 (a relative error), got {getattr(self, name)}")
        for name in ("lambda_depth", "lambda_step"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"field '{name}': must lie in [0, 1] (1 = never), got {getattr(self, name)}")


def armed(shortcut: DepthShortcut, thought_map):
    """`thought_map` that also arms `shortcut` for the call feeding its thought (column 0 of that call, every
    row): in a latent pass each thought is the first new position of the call that follows the map."""

    def feed(hidden, slot):
        z, extra = thought_map(hidden, slot)
        shortcut.arm(torch.ones((z.shape[0], 1), dtype=torch.bool, device=z.device))
        return z, extra

    return feed


def step_mixture(heads):
    """The thought map of the shortcut path: thought j + 1 = s x step_adapter(z_j) + (1 - s) x h_j, where z_j is
    thought j, h_j the state at its slot and s = step_router(z_j) (the first thought is the state at <bot>)."""
    fed = []

    def mix(hidden, slot):
        if not fed:
            z = hidden
        else:
            s = heads.step_router(fed[-1])[:, None]  # [B, 1]
            z = s * heads.step_adapter(fed[-1]) + (1 - s) * hidden  # [B, d]
        fed.append(z)
        return z, None

    return mix


@register_method("system15")
class System15(Method):
    config_cls = System15Config

    def __init__(self, config: System15Config):
        super().__init__(config)
        self.stage = 2  # a fresh method is in its inference state; training starts with stage 1

    def prepare(self, lm) -> None:
        self.heads(lm)

    def heads(self, lm):
        cfg = self.config
        return lm.add_head(HEAD, "shortcut", adapter_size=cfg.adapter_size, router_bias=cfg.router_bias)

    def start_step(self, step: int, steps_per_epoch: int) -> bool:
        self.stage = 1 if step < self.config.distill_steps else 2
        return step == self.config.distill_steps > 0  # fresh AdamW moments for stage 2 (also when resumed there)

    def collate(self, lm, problems):
        cfg = self.config
        encs = [encode_problem(lm.tokenizer, p) for p in problems]
        batch = build_latent_batch(
            [e.prompt + [lm.bot_id] for e in encs],
            [cfg.num_latents] * len(encs),
            [[lm.eot_id] + e.answer for e in encs],
            [[IGNORE] + e.answer for e in encs],  # nothing is predicted for <eot> itself
            lm.pad_id,
        )
        if self.stage == 1:
            batch.extras.update(self.teacher_batch(lm, encs))
        return {"latent_batch": batch}

    def teacher_batch(self, lm, encs) -> dict:
        """Stage 1's teacher (question + CoT + answer, left-padded) and the (row, thought, teacher position) pairs
        matched: thought (k + 1) x c - 1 and the last token of step k, for the steps that have a thought."""
        c, n = self.config.c_thought, self.config.num_latents
        sequences = [e.prompt + e.cot + e.answer for e in encs]
        padded = left_pad(sequences, lm.pad_id, [[IGNORE] * len(e.prompt) + e.cot + e.answer for e in encs])
        width = padded["input_ids"].shape[1]
        pairs = []
        for row, (enc, seq) in enumerate(zip(encs, sequences)):
            cot_start = width - len(seq) + len(enc.prompt)
            for k, (_, end) in enumerate(enc.step_spans[: n // c]):
                pairs.append((row, (k + 1) * c - 1, cot_start + end - 1))
        rows, slots, positions = torch.tensor(pairs, dtype=torch.long).reshape(-1, 3).unbind(1)
        return {
            "teacher_ids": padded["input_ids"],
            "teacher_mask": padded["attention_mask"],
            "teacher_positions": padded["position_ids"],
            "teacher_labels": padded["labels"],
            "pair_rows": rows,
            "pair_slots": slots,
            "pair_teacher_at": positions,
        }

    def batch_tokens(self, batch) -> int:
        latent_batch = batch["latent_batch"]
        passes = 2 if self.stage == 2 else 1  # stage 2 runs the latent pass twice (full and shortcut paths)
        teacher = latent_batch.extras.get("teacher_mask")
        return passes * latent_batch.num_tokens + (int(teacher.sum()) if teacher is not None else 0)

    def loss(self, lm, batch):
        latent_batch = batch["latent_batch"]
        return self.distill_loss(lm, latent_batch) if self.stage == 1 else self.shortcut_loss(lm, latent_batch)

    def distill_loss(self, lm, latent_batch):
        """Stage 1: student CE + teacher_weight x teacher CE + distill_weight x step-end matching."""
        cfg, extras = self.config, latent_batch.extras
        student = latent_forward(lm, latent_batch, identity_map)
        teacher = lm.backbone(
            input_ids=extras["teacher_ids"],
            attention_mask=extras["teacher_mask"],
            position_ids=extras["teacher_positions"],
        ).last_hidden_state  # [B, T, d]
        ce, _ = next_token_loss(lm, student.suffix_hidden, latent_batch.suffix_labels)
        teacher_ce, _ = next_token_loss(lm, teacher, extras["teacher_labels"])
        matched = student.latent_hidden[extras["pair_rows"], extras["pair_slots"]]  # [M, d]
        targets = teacher[extras["pair_rows"], extras["pair_teacher_at"]]  # [M, d]
        distill = state_match_loss(matched, targets, cfg.distill_divide_std)
        total = ce + cfg.teacher_weight * teacher_ce + cfg.distill_weight * distill
        metrics = {"ce": ce, "teacher_ce": teacher_ce, "distill": distill}
        return total, {k: float(v.detach()) for k, v in metrics.items()}

    def shortcut_loss(self, lm, latent_batch):
        """Stage 2: shortcut-path CE + full-path CE + matching + the routers' and adapters' supervision."""
        cfg, heads = self.config, self.heads(lm)
        full = DepthShortcut(lm, heads, "full")
        with full.attached():
            teacher = latent_forward(lm, latent_batch, armed(full, identity_map))
        mixed = DepthShortcut(lm, heads, "mix")
        with mixed.attached():
            student = latent_forward(lm, latent_batch, armed(mixed, step_mixture(heads)))
        ce, _ = next_token_loss(lm, student.suffix_hidden, latent_batch.suffix_labels)
        full_ce, _ = next_token_loss(lm, teacher.suffix_hidden, latent_batch.suffix_labels)
        used = student.slot_mask  # [B, N]
        match = state_match_loss(student.latent_hidden[used], teacher.latent_hidden[used], cfg.distill_divide_std)
        norm = frozen_final_norm(lm)
        depth = [
            shortcut_supervision(
                heads.routers[layer],
                lambda x, adapter=heads.adapters[layer]: norm(adapter(x)),  # an exit here: the state the model reads
                torch.stack([call.inputs[layer] for call in full.calls], 1),  # [B, N, d] layer inputs
                teacher.latent_hidden,
                used,
                cfg.exit_tolerance,
            )
            for layer in range(len(heads.routers))
        ]
        step = shortcut_supervision(
            heads.step_router,
            heads.step_adapter,
            teacher.latent_inputs,
            teacher.latent_hidden,
            used,
            cfg.skip_tolerance,
        )
        adapter = sum(d[0] for d in depth) / len(depth)
        router = sum(d[1] for d in depth) / len(depth)
        total = (
            ce
            + cfg.full_path_weight * full_ce
            + cfg.match_weight * match
            + cfg.router_weight * (router + step[1])
            + cfg.adapter_weight * (adapter + step[0])
        )
        weights = torch.cat([w for call in mixed.calls for w in call.weights])
        metrics = {"ce": ce, "full_ce": full_ce, "match": match, "adapter": adapter, "router": router}
        metrics.update(step_adapter=step[0], step_router=step[1], w=weights.mean())
        logged = {k: float(v.detach()) for k, v in metrics.items()}
        logged.update(exit_target=sum(d[2] for d in depth) / len(depth), skip_target=step[2])
        return total, logged

    def solver(self, lm):
        cfg = self.config
        return ShortcutSolver(
            lm,
            identity_map,
            self.heads(lm),
            cfg.num_latents,
            cfg.lambda_depth,
            cfg.lambda_step,
            cfg.max_new_tokens,
            name=self.name,
        )
