"""SoftCoT (Xu et al. 2025, arXiv 2502.12134) and SoftCoT++ (arXiv 2505.11484): soft thoughts from a frozen
assistant model, mapped by a trained Linear into a frozen main model's prompt (model/soft_thoughts.py).

- SoftCoT: the assistant reads the question and N placeholder slots; its last hidden states there, projected,
  fill N slots of the main model's prompt (evaluation/soft_prompts.py); CE on the main model's worked
  solution and answer. Only the projection trains. The reference trains with 32 thoughts and evaluates with 4.
- SoftCoT++: K trained initial tokens fill the assistant's slots, one per thinking path, giving K thought
  sets per question; loss = mean CE over the K paths + contrastive_weight x an InfoNCE across the K sets
  (`diversity_loss`, each set against a dropout view of itself, the others as negatives, cosine x scale).
  At evaluation the K paths are K samples of the problem, majority-voted by the harness.
Changed from the reference: the initial tokens receive gradients (the reference computes the assistant
under no_grad, which detaches them); the contrastive loss is computed per question and averaged (the
reference overwrites its thought tensor inside its loop over the batch, so rows after the first are wrong);
the loss is the mean over paths, not their sum (the reference sums the K CE terms and adds InfoNCE / K:
contrastive_weight = 1 / K^2 gives its balance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentreason.config import field
from latentreason.errors import ConfigError, UserError
from latentreason.evaluation.soft_prompts import SoftThoughtPrompts
from latentreason.evaluation.soft_thought_solver import SoftThoughtSolver, prompt_batch
from latentreason.methods.base import Method, next_token_loss, register_method
from latentreason.model.build import build_soft_thought_lm
from latentreason.model.soft_thoughts import SoftThoughtLM
from latentreason.train_config import SFTConfig


@dataclass
class SoftCoTConfig(SFTConfig):
    answer_modes = ("strict", "flexible", "boxed", "auto")
    assistant_model_name_or_path: str = field(
        "tiny",
        help="the frozen assistant that writes the thoughts: 'smollm2', a local model directory, a hub id, or "
        "'tiny' (from scratch, sized by assistant_tiny_model); the main model is model_name_or_path, also frozen",
    )
    assistant_tiny_model: dict = field({}, help="architecture of a 'tiny' assistant (as tiny_model)")
    assistant_tokenizer_vocab_size: int = field(320, help="BPE vocabulary of a 'tiny' assistant's own tokenizer")
    answer_mode: str = field(
        "auto",
        help="the form of the main model's trained reply and how answers are read: auto or boxed (a '\\boxed{}' "
        "reply, read as `latentreason eval --model smollm2` reads it), strict ('#### N'), flexible (last number)",
    )
    num_thought_tokens: int = field(32, help="soft thoughts per path in training (the reference: 32)")
    eval_thought_tokens: int = field(4, help="soft thoughts per path at evaluation (the reference: 4)")

    def __post_init__(self):
        super().__post_init__()
        if self.num_thought_tokens < 1 or self.eval_thought_tokens < 1:
            raise ConfigError(
                f"fields 'num_thought_tokens' and 'eval_thought_tokens': must be >= 1, got "
                f"{self.num_thought_tokens} and {self.eval_thought_tokens}"
            )


@dataclass
class SoftCoTPPConfig(SoftCoTConfig):
    num_paths: int = field(10, help="thinking paths K: trained initial tokens, thought sets per question (paper: 10)")
    eval_paths: int = field(0, help="paths used at evaluation, the first ones (0 = all num_paths)")
    contrastive_weight: float = field(0.01, help="weight of the InfoNCE (0.01 = 1/K^2: the reference's at K = 10)")
    contrastive_scale: float = field(20.0, help="InfoNCE logit scale on cosine similarities (the reference: 20)")
    contrastive_dropout: float = field(0.5, help="dropout making each thought set's positive view (the reference: 0.5)")

    def __post_init__(self):
        super().__post_init__()
        if self.num_paths < 1 or not 0 <= self.eval_paths <= self.num_paths:
            raise ConfigError(
                f"fields 'num_paths' and 'eval_paths': need num_paths >= 1 and 0 <= eval_paths <= num_paths, got "
                f"{self.num_paths} and {self.eval_paths}"
            )
        if self.contrastive_weight < 0 or self.contrastive_scale <= 0 or not 0 <= self.contrastive_dropout < 1:
            raise ConfigError("contrastive_weight must be >= 0, contrastive_scale > 0, contrastive_dropout in [0, 1)")


def diversity_loss(thoughts: torch.Tensor, views: torch.Tensor, scale: float) -> torch.Tensor:
    """InfoNCE across each question's K thought sets: set k's positive is its own view k, the negatives the
    other sets' views. Mean over questions and sets, so a batch's loss is the mean of its questions' losses.

    thoughts, views: [B, K, N, d] (views: e.g. a dropout copy of thoughts).
    """
    batch, paths = thoughts.shape[:2]
    anchors = F.normalize(thoughts.flatten(2).float(), dim=-1)  # [B, K, N*d]
    positives = F.normalize(views.flatten(2).float(), dim=-1)  # [B, K, N*d]
    logits = scale * anchors @ positives.transpose(1, 2)  # [B, K, K]
    targets = torch.arange(paths, device=logits.device).repeat(batch)  # [B*K]
    return F.cross_entropy(logits.reshape(batch * paths, paths), targets)


@register_method("softcot")
class SoftCoT(Method):
    config_cls = SoftCoTConfig

    def build_lm(self, config, train):
        return build_soft_thought_lm(config, train, self.initial_tokens)

    @property
    def initial_tokens(self) -> int:
        """Trained initial tokens (0: the assistant's slots hold placeholder ids)."""
        return 0

    @property
    def paths(self) -> int:
        """Thought sets per question in training."""
        return 1

    @property
    def eval_paths(self) -> int:
        return 1

    def prepare(self, lm) -> None:
        if not isinstance(lm, SoftThoughtLM):
            raise UserError(f"{self.name} trains a soft-thought model; the model given has no assistant or projection")

    def prompts(self, lm, num_thoughts: int) -> SoftThoughtPrompts:
        return SoftThoughtPrompts(lm.tokenizer, lm.assistant_tokenizer, num_thoughts, self.config.answer_mode)

    def collate(self, lm, problems):
        prompts = self.prompts(lm, self.config.num_thought_tokens)
        replies = [prompts.reply_ids(p) for p in problems]
        return prompt_batch(lm, prompts, [p.question for p in problems], replies)

    def loss(self, lm, batch):
        paths = self.paths
        n = self.config.num_thought_tokens
        thoughts = lm.thoughts(batch["assistant_ids"], batch["assistant_mask"], n, paths)  # [B*K, N, d]
        hidden = lm.backbone(
            inputs_embeds=lm.with_thoughts(batch["input_ids"], batch["slot_at"], thoughts),  # [B*K, L, d]
            attention_mask=batch["attention_mask"].repeat_interleave(paths, 0),
            position_ids=batch["position_ids"].repeat_interleave(paths, 0),
        ).last_hidden_state  # [B*K, L, d]
        ce, count = next_token_loss(lm, hidden, batch["labels"].repeat_interleave(paths, 0))
        extra, metrics = self.thought_loss(thoughts.unflatten(0, (-1, paths)))  # [B, K, N, d]
        return ce + extra, {"ce": float(ce.detach()), "tokens": count, **metrics}

    def thought_loss(self, thoughts: torch.Tensor) -> tuple[torch.Tensor | float, dict]:
        """A loss on the thought sets [B, K, N, d] beside the CE (none for SoftCoT)."""
        return 0.0, {}

    def solver(self, lm):
        prompts = self.prompts(lm, self.config.eval_thought_tokens)
        return SoftThoughtSolver(lm, prompts, self.eval_paths, self.config.max_new_tokens, self.name)


@register_method("softcotpp")
class SoftCoTPP(SoftCoT):
    config_cls = SoftCoTPPConfig

    @property
    def initial_tokens(self) -> int:
        return self.config.num_paths

    @property
    def paths(self) -> int:
        return self.config.num_paths

    @property
    def eval_paths(self) -> int:
        return self.config.eval_paths or self.config.num_paths

    def thought_loss(self, thoughts):
        cfg = self.config
        views = F.dropout(thoughts, cfg.contrastive_dropout, training=True)  # [B, K, N, d]
        contrastive = diversity_loss(thoughts, views, cfg.contrastive_scale)
        return cfg.contrastive_weight * contrastive, {"contrastive": float(contrastive.detach())}
