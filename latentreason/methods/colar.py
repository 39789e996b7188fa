"""CoLaR (Tan et al. 2025), supervised stage: think in compressed step-token embeddings.

- Compression: the CoT's token embeddings are merged in windows of r (sum / sqrt(count)), so a CoT of T
  tokens becomes ceil(T / r) latents. r is drawn from 1..max_compression per example in training
  (deterministic per seed, step and question) and written in the prompt: `question (speed r) <bot>`.
- Training is one teacher-forced call over `question (speed r) <bot> [compressed CoT] <eot> answer`:
  the ground-truth latents are the inputs. A Gaussian latent head reads the hidden state before each
  latent and predicts it divided by the embedding std (`latent_loss`: MSE on the mean or Gaussian NLL,
  targets detached); CE on `<eot>` (the end-of-thinking marker, predicted after the last latent), on the
  answer and, at each latent slot, on one token of its window drawn at random (as the reference does:
  without it the LM head is never told not to say `<eot>` before the last latent).
- Inference: the head's mean (or a sample, `eval_sample_latents`) times the embedding std is the next
  input; a row stops when the LM head's argmax is `<eot>` (so latent counts vary per row), and the
  answer continues on the same KV cache (the reference re-prefills the whole sequence).
- The embedding std is `embedding_std`, or, when 0, measured from the embedding matrix when training
  starts and saved with the model, so evaluation scales exactly as training did.
The RL stage is GRPO on the shared trainer (`latentreason rl`), sampling the actions of CoLaRActions.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentreason.config import field
from latentreason.engine.batch import IGNORE, left_pad
from latentreason.engine.loss import next_token_loss
from latentreason.errors import ConfigError
from latentreason.evaluation.latent_solver import LatentSolver
from latentreason.layout import encode_problem
from latentreason.methods.base import Method, register_method
from latentreason.methods.latent_actions import LatentActions
from latentreason.train_config import SFTConfig

LOSSES = ("nll", "mse")
STD_KEY = "colar_embedding_std"  # in lm.meta, saved in latentreason.json


@dataclass
class CoLaRConfig(SFTConfig):
    max_compression: int = field(5, help="training draws the compression factor r from 1..max_compression (ref: 5)")
    compression_factor: int = field(5, help="compression factor r written in the prompt at evaluation")
    latent_loss: str = field("mse", help=f"loss of the latent head: {', '.join(LOSSES)} (the reference: mse)")
    latent_weight: float = field(1.0, help="weight of the latent head's loss against the CE")
    embedding_std: float = field(
        0.0, help="scale of the latents (0 = measured from the embedding matrix; the reference: 0.018 for Llama-1B)"
    )
    max_latents: int = field(64, help="most latents per problem at evaluation (rows stop at <eot> before)")
    window_token_ce: bool = field(
        True,
        help="CE at each latent slot on one token of its window, drawn at random (the reference): the LM head "
        "learns that thinking goes on there, not only where <eot> comes",
    )
    eval_sample_latents: bool = field(False, help="sample latents at evaluation instead of using the mean")

    def __post_init__(self):
        super().__post_init__()
        if self.max_compression < 1 or self.compression_factor < 1 or self.max_latents < 1:
            raise ConfigError("max_compression, compression_factor and max_latents must be >= 1")
        if self.latent_loss not in LOSSES:
            raise ConfigError(f"field 'latent_loss': expected one of {LOSSES}, got {self.latent_loss!r}")
        if self.embedding_std < 0 or self.latent_weight < 0:
            raise ConfigError("embedding_std and latent_weight must be >= 0")


def compress(embeds: torch.Tensor, lengths: torch.Tensor, factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each row's first lengths[b] embeddings in windows of factor[b]: sum / sqrt(count).

    embeds: [B, T, d]; lengths, factor: [B]. Returns latents [B, M, d] and their mask [B, M].
    """
    bsz, steps, _ = embeds.shape
    groups = (lengths + factor - 1) // factor  # [B]
    width = int(groups.max()) if bsz else 0
    t = torch.arange(steps, device=embeds.device)[None]  # [1, T]
    real = t < lengths[:, None]  # [B, T]
    slot = torch.arange(bsz, device=embeds.device)[:, None] * width + t // factor[:, None]  # [B, T] flat group
    index = slot[real]  # [N] the group of every real token
    sums = embeds.new_zeros(bsz * width, embeds.shape[-1]).index_add(0, index, embeds[real])  # [B*M, d]
    counts = torch.bincount(index, minlength=bsz * width).clamp(min=1)  # [B*M]
    latents = sums / counts.to(sums.dtype).sqrt()[:, None]
    mask = torch.arange(width, device=embeds.device)[None] < groups[:, None]  # [B, M]
    return latents.view(bsz, width, embeds.shape[-1]), mask  # explicit d: width may be 0


def gaussian_nll(mean: torch.Tensor, logvar: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-density of target under N(mean, exp(logvar)) per dimension, without the constant."""
    return 0.5 * (logvar + (target - mean).pow(2) * torch.exp(-logvar))


class CoLaRActions(LatentActions):
    """Prompt `question (speed r) <bot>`; the head predicts the next compressed embedding divided by the
    embedding std, so z x std is fed; before every slot the LM head saying `<eot>` stops the thinking."""

    stop_reads_latent = False  # the decision reads the hidden state before the slot, never its z

    def __init__(self, lm, method: CoLaR):
        super().__init__(lm, method.latent_head, method.config.max_latents)
        self.scale, self.factor = lm.meta[STD_KEY], method.config.compression_factor

    def prompt(self, problem) -> list[int]:
        return CoLaR.speed_prompt(self.lm, encode_problem(self.lm.tokenizer, problem), self.factor)

    def stop_logits(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = self.lm.lm_head(hidden).float()  # [.., V]
        eot = torch.arange(logits.shape[-1], device=logits.device) == self.lm.eot_id  # [V]
        # Any token but <eot> continues: log-sum-exp of the others, so softmax gives (1 - p(eot), p(eot)).
        return torch.stack([logits.masked_fill(eot, -math.inf).logsumexp(-1), logits[..., self.lm.eot_id]], -1)

    def greedy_stop(self, hidden: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        # The token the model would write is <eot> (not p(eot) > 1/2: many tokens may share the rest).
        return self.lm.lm_head(hidden).argmax(-1) == self.lm.eot_id  # [..]


@register_method("colar")
class CoLaR(Method):
    config_cls = CoLaRConfig
    latent_actions = CoLaRActions

    def __init__(self, config: CoLaRConfig):
        super().__init__(config)
        self.step = 0

    def prepare(self, lm) -> None:
        self.latent_head = lm.add_head("latent_head", "gaussian")
        if STD_KEY not in lm.meta:
            lm.meta[STD_KEY] = self.config.embedding_std or float(lm.embed.weight.detach().float().std())

    def start_step(self, step: int, steps_per_epoch: int) -> bool:
        self.step = step
        return False

    def rng_for(self, problem, stream: str = "") -> random.Random:
        """Deterministic per (seed, step, question, stream), so a resumed run draws what the uninterrupted
        one did; each `stream` (what is drawn) is independent of the others."""
        key = f"{self.config.seed}|{self.step}|{problem.question}" + (f"|{stream}" if stream else "")
        return random.Random(zlib.crc32(key.encode()))

    def factor_for(self, problem) -> int:
        return self.rng_for(problem).randint(1, self.config.max_compression)

    def window_labels(self, problem, cot: list[int], factor: int) -> list[int]:
        """One token of each window, drawn at random, as the label of its latent slot (or IGNORE)."""
        windows = [cot[start : start + factor] for start in range(0, len(cot), factor)]
        if not self.config.window_token_ce:
            return [IGNORE] * len(windows)
        rng = self.rng_for(problem, "window")
        return [rng.choice(window) for window in windows]

    @staticmethod
    def speed_prompt(lm, enc, factor: int) -> list[int]:
        """question (speed r) <bot>: the compression factor is part of the prompt."""
        return enc.prompt + lm.tokenizer(f"(speed {factor})", add_special_tokens=False)["input_ids"] + [lm.bot_id]

    def collate(self, lm, problems):
        sequences, labels, cots, factors = [], [], [], []
        for problem in problems:
            enc = encode_problem(lm.tokenizer, problem)
            factor = self.factor_for(problem)
            prompt = self.speed_prompt(lm, enc, factor)
            slots = [lm.latent_id] * math.ceil(len(enc.cot) / factor)
            tail = [lm.eot_id] + enc.answer  # <eot> is predicted: the model learns when to stop thinking
            sequences.append(prompt + slots + tail)
            labels.append([IGNORE] * len(prompt) + self.window_labels(problem, enc.cot, factor) + tail)
            cots.append(enc.cot)
            factors.append(factor)
        batch = left_pad(sequences, lm.pad_id, labels)
        lengths = torch.tensor([len(c) for c in cots])
        cot_ids = torch.full((len(cots), max(1, int(lengths.max()))), lm.pad_id, dtype=torch.long)  # [B, T]
        for row, cot in enumerate(cots):
            cot_ids[row, : len(cot)] = torch.tensor(cot, dtype=torch.long)
        batch.update(cot_ids=cot_ids, cot_lengths=lengths, factors=torch.tensor(factors))
        return batch

    def forward_pass(self, lm, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One teacher-forced call with the compressed CoT in the latent slots.

        Returns hidden [B, L, d], the latents fed [K, d] and the hidden states just before them [K, d]
        (K = latents in the batch, row by row).
        """
        latents, kept = compress(lm.embed(batch["cot_ids"]), batch["cot_lengths"], batch["factors"])  # [B, M, d]
        slots = batch["input_ids"] == lm.latent_id  # [B, L]
        fed = latents[kept]  # [K, d] in row-major order, as masked_scatter fills
        embeds = lm.embed(batch["input_ids"]).masked_scatter(slots[..., None], fed.to(lm.embed.weight.dtype))
        hidden = lm.backbone(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).last_hidden_state  # [B, L, d]
        before = torch.cat([slots[:, 1:], slots[:, :1] & False], dim=1)  # [B, L] the position before each slot
        return hidden, fed, hidden[before]

    def latent_loss(self, lm, before: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        if fed.shape[0] == 0:
            return before.sum() * 0.0
        mean, logvar = self.latent_head(before)  # [K, d], [K, d]
        target = fed.detach().float() / lm.meta[STD_KEY]  # unit-scale targets; no gradient into the inputs
        if self.config.latent_loss == "mse":
            return F.mse_loss(mean.float(), target)
        return gaussian_nll(mean.float(), logvar.float(), target).mean()

    def loss(self, lm, batch):
        hidden, fed, before = self.forward_pass(lm, batch)
        ce, _ = next_token_loss(lm, hidden, batch["labels"])
        latent = self.latent_loss(lm, before, fed)
        metrics = {"ce": float(ce.detach()), "latent": float(latent.detach()), "latents": fed.shape[0] / len(hidden)}
        return ce + self.config.latent_weight * latent, metrics

    def thought_map(self, lm):
        head, scale, sample = self.latent_head, lm.meta[STD_KEY], self.config.eval_sample_latents

        def thought(hidden, slot):
            mean, logvar = head(hidden)  # [B, d], [B, d]
            z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
            return z * scale, (mean, logvar)

        return thought

    def solver(self, lm):
        self.prepare(lm)
        return CoLaRSolver(lm, self.thought_map(lm), self.latent_actions(lm, self), self.config.max_new_tokens)


class CoLaRSolver(LatentSolver):
    """The latent rollout from `question (speed r) <bot>`; each row thinks until it predicts <eot>."""

    def __init__(self, lm, thought_map, actions: CoLaRActions, max_new_tokens: int):
        super().__init__(lm, thought_map, actions.controller(), actions.max_latents, max_new_tokens, name="colar")
        self.actions = actions

    def prompts(self, problems):
        return [self.actions.prompt(p) for p in problems]
