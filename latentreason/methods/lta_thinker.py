"""LTA-Thinker (Wang et al. 2025, arXiv 2509.12875): a learnable prior (model/lta_prior.py: one transformer
block and a Linear over the main model's input embeddings) writes K latent thoughts, placed between <bot> and
<eot> after the question; the main model, frozen (or LoRA-tuned), writes the CoT and the answer after them.

Loss = sft_weight x CE (CoT and answer, or the answer only) + alignment_weight x the semantic-alignment KL +
focus_weight x the reasoning-focus InfoNCE; the reference (github.com/wangjiaqi886/LTA-Thinker) weights all
three 0.33. Both extra terms are computed on the prior's projected states, as the reference does:
- semantic alignment: p = softmax over the d features of the state at the question's last token, q_k the same
  for thought k; KL(p || q_k), mean over thoughts and questions (`semantic_alignment_kl`).
- reasoning focus: the prior also reads the CoT steps in training; the anchor (the question's last state) is
  contrasted with the state at each step's last token, cosine / temperature (0.1), softmax over that
  question's steps; the positive is the step whose state is most cosine-similar to the mean input embedding
  of the answer's tokens, chosen without gradient (`reasoning_focus_nce`).
Changed from the reference: the question and the slots never attend to the steps (the reference lets every
position see every other, so its thoughts read the CoT in training but not at evaluation), and each step sees
only the question, the slots and itself (with no positions, steps that see each other give their shared last
token one state, and the InfoNCE is a constant); the slots are
trained vectors (the reference feeds K frozen reserved-token embeddings); the projection starts at the scale of
the main model's embeddings; questions without steps leave the InfoNCE (the reference gives them a loss over
nothing but masked logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentreason.config import field
from latentreason.engine.batch import left_pad
from latentreason.errors import ConfigError
from latentreason.evaluation.lta_solver import LTAThinkerSolver, main_batch, prior_batch, prior_states, with_thoughts
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, next_token_loss, register_method
from latentreason.model.lora import add_lora
from latentreason.train_config import SFTConfig


@dataclass
class LTAThinkerConfig(SFTConfig):
    num_thoughts: int = field(8, help="latent thoughts K the prior writes in training (the reference's README: 32)")
    eval_thoughts: int = field(0, help="thoughts at evaluation, the first slots (0 = num_thoughts; the README: 2)")
    write_cot: bool = field(True, help="the main model writes the CoT after <eot>, then the answer (the reference)")
    sft_weight: float = field(0.33, help="weight of the main model's CE (the reference: 0.33)")
    alignment_weight: float = field(0.33, help="weight of the semantic-alignment KL (the reference: 0.33)")
    focus_weight: float = field(0.33, help="weight of the reasoning-focus InfoNCE (the reference: 0.33)")
    focus_temperature: float = field(0.1, help="temperature of the reasoning-focus InfoNCE (the reference: 0.1)")
    prior_heads: int = field(1, help="attention heads of the prior's block (the reference: 1)")
    prior_ffn_size: int = field(0, help="feed-forward width of the prior's block (0 = the main model's MLP width)")
    prior_dropout: float = field(0.0, help="dropout in the prior's block (the reference: 0)")
    lora_r: int = field(0, help="LoRA rank on the main model (0 = frozen, the reference's default; its LoRA: 16)")
    lora_alpha: int = field(32, help="LoRA alpha (the reference: 32)")
    lora_dropout: float = field(0.1, help="dropout on the LoRA path (the reference: 0.1)")
    lora_target_modules: str = field("all-linear", help="'all-linear' or module names (the reference: q_proj,v_proj)")

    def __post_init__(self):
        super().__post_init__()
        if self.num_thoughts < 1 or not 0 <= self.eval_thoughts <= self.num_thoughts:
            raise ConfigError(
                f"fields 'num_thoughts' and 'eval_thoughts': need num_thoughts >= 1 and 0 <= eval_thoughts <= "
                f"num_thoughts, got {self.num_thoughts} and {self.eval_thoughts}"
            )
        weights = {"sft_weight": self.sft_weight, "alignment_weight": self.alignment_weight}
        weights["focus_weight"] = self.focus_weight
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ConfigError(f"fields {', '.join(weights)}: must be >= 0 and not all 0, got {weights}")
        if self.focus_temperature <= 0:
            raise ConfigError(f"field 'focus_temperature': must be > 0, got {self.focus_temperature}")
        if self.prior_heads < 1 or self.prior_ffn_size < 0 or not 0.0 <= self.prior_dropout < 1.0:
            raise ConfigError(
                f"fields 'prior_heads', 'prior_ffn_size', 'prior_dropout': need >= 1, >= 0 and [0, 1), got "
                f"{self.prior_heads}, {self.prior_ffn_size} and {self.prior_dropout}"
            )
        if self.lora_r < 0 or (self.lora_r and self.lora_alpha <= 0) or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_r must be >= 0 (0 = frozen main model), lora_alpha > 0 and lora_dropout in [0, 1)")


def semantic_alignment_kl(anchor: torch.Tensor, thoughts: torch.Tensor) -> torch.Tensor:
    """Mean over questions and thoughts of KL(softmax(anchor) || softmax(thought_k)), softmax over features.

    anchor: [B, d] the question's state; thoughts: [B, K, d]."""
    log_p = F.log_softmax(anchor.float(), dim=-1)[:, None]  # [B, 1, d]
    log_q = F.log_softmax(thoughts.float(), dim=-1)  # [B, K, d]
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def reasoning_focus_nce(
    anchor: torch.Tensor, steps: torch.Tensor, step_mask: torch.Tensor, answer: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE of each question's anchor over its own steps, the positive being the step nearest the answer.

    anchor: [B, d]; steps: [B, S, d] step states; step_mask: [B, S] real steps; answer: [B, d] the answer's
    mean token embedding. Mean over the questions with at least one step (0 when none has)."""
    steps = F.normalize(steps.float(), dim=-1)  # [B, S, d]
    with torch.no_grad():
        to_answer = torch.einsum("bsd,bd->bs", steps, F.normalize(answer.float(), dim=-1))  # [B, S]
        positive = to_answer.masked_fill(~step_mask, float("-inf")).argmax(-1)  # [B]
    logits = torch.einsum("bsd,bd->bs", steps, F.normalize(anchor.float(), dim=-1)) / temperature  # [B, S]
    logits = logits.masked_fill(~step_mask, float("-inf"))
    has_steps = step_mask.any(-1)  # [B]
    if not has_steps.any():
        return logits.new_zeros(())
    return F.cross_entropy(logits[has_steps], positive[has_steps])


@register_method("lta-thinker")
class LTAThinker(Method):
    config_cls = LTAThinkerConfig

    def resume_resets_optimizer(self) -> bool:
        return self.config.lora_r > 0

    def prepare(self, lm) -> None:
        cfg = self.config
        hidden = lm.model.config.hidden_size
        if hidden % cfg.prior_heads:
            raise ConfigError(f"field 'prior_heads': {cfg.prior_heads} does not divide the hidden size {hidden}")
        if cfg.lora_r:
            special = [lm.bot_id, lm.latent_id, lm.eot_id]
            add_lora(lm.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, special)
        else:
            lm.model.requires_grad_(False)  # the reference's default: only the prior trains
        self.prior(lm)

    def prior(self, lm):
        cfg = self.config
        return lm.add_head(
            "lta_prior",
            "lta_prior",
            num_slots=cfg.num_thoughts,
            num_heads=cfg.prior_heads,
            ffn_size=cfg.prior_ffn_size,
            dropout=cfg.prior_dropout,
        )

    def collate(self, lm, problems):
        encoded = [encode_problem(lm.tokenizer, p) for p in problems]
        prompts = [e.prompt for e in encoded]
        replies = [(e.cot if self.config.write_cot else []) + e.answer for e in encoded]
        steps = [[e.cot[start:end] for start, end in e.step_spans] for e in encoded]
        answers = [lm.tokenizer(str(p.answer), add_special_tokens=False)["input_ids"] for p in problems]
        answer = left_pad(answers, lm.pad_id)
        n = self.config.num_thoughts
        batch = main_batch(lm, prompts, n, replies)
        batch.update(prior_batch(prompts, steps, lm.pad_id, n))
        batch.update(answer_ids=answer["input_ids"], answer_mask=answer["attention_mask"])
        return batch

    def loss(self, lm, batch):
        cfg, n = self.config, self.config.num_thoughts
        states = prior_states(lm, self.prior(lm), batch, n)  # [B, n+L, d]
        rows = torch.arange(states.shape[0], device=states.device)
        thoughts, anchor = states[:, :n], states[rows, batch["anchor_at"]]  # [B, n, d], [B, d]
        steps = states[rows[:, None], batch["step_ends"]]  # [B, S, d]
        hidden = lm.backbone(
            inputs_embeds=with_thoughts(lm, batch["input_ids"], thoughts),
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).last_hidden_state  # [B, L, d]
        ce, count = next_token_loss(lm, hidden, batch["labels"])
        with torch.no_grad():  # only picks the positive step
            mask = batch["answer_mask"][..., None].to(hidden.dtype)  # [B, A, 1]
            answer = (lm.embed(batch["answer_ids"]) * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B, d]
        alignment = semantic_alignment_kl(anchor, thoughts)
        focus = reasoning_focus_nce(anchor, steps, batch["step_mask"], answer, cfg.focus_temperature)
        total = cfg.sft_weight * ce + cfg.alignment_weight * alignment + cfg.focus_weight * focus
        metrics = {"ce": float(ce.detach()), "alignment_kl": float(alignment.detach()), "focus": float(focus.detach())}
        return total, {**metrics, "tokens": count}

    def solver(self, lm):
        cfg = self.config
        n = cfg.eval_thoughts or cfg.num_thoughts
        return LTAThinkerSolver(lm, self.prior(lm), n, cfg.max_new_tokens, self.name)
