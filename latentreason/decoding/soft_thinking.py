"""Soft Thinking (arXiv 2505.15778): while thinking, each input is a concept token, the probability-weighted
mixture of the most likely tokens' embeddings, instead of one sampled token.

Per thinking step: p = softmax(logits / T) -> top-k, top-p, min-p (sampling.filtered_logprobs) -> keep the
`max_topk` largest -> renormalise -> (optional Dirichlet or Gumbel-softmax noise) -> input = sum_i p_i x
embed(id_i), gathered for those ids only (never a dense p @ E; `lm.embed` applies any scaling the model's
embedding does). The trace records each soft step's top-1 token.

Thinking ends when the top-1 token is the first token of `think_end` (the rest of it is forced), when Cold
Stop fires (entropy of softmax(logits / T), before the filters, below `cold_stop_entropy` for
`cold_stop_steps` consecutive steps), or at `max_thinking_steps`: then `think_end` is forced and the row
decodes text with the context's sampling. A row whose top-1 is a stop token (eos, end of turn) ends there.
With top_k 1 (or temperature 0) the weight is 1 on the argmax: exactly greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.decoding.base import DecodeContext, PolicyDecoder, register_decoder
from latentreason.engine.noise import row_dirichlet, row_gumbel
from latentreason.engine.sampling import Sampling, filtered_logprobs
from latentreason.engine.steps import StepChoice, StepView
from latentreason.errors import ConfigError

NOISES = ("none", "dirichlet", "gumbel")
STREAM_NOISE = 1  # row_uniform stream of the concept noise (0 is token sampling)


@dataclass
class SoftThinkingConfig:
    temperature: float = field(0.6, help="temperature of the concept weights (0: all weight on the argmax)")
    top_k: int = field(30, help="keep the k most probable tokens (0: all)")
    top_p: float = field(0.95, help="keep the smallest sorted prefix reaching this probability")
    min_p: float = field(0.001, help="drop tokens below min_p x the largest probability")
    max_topk: int = field(10, help="at most this many tokens per concept (after the filters)")
    cold_stop_entropy: float = field(0.01, help="Cold Stop: entropy below this counts as confident")
    cold_stop_steps: int = field(256, help="Cold Stop: this many confident steps in a row end thinking (0: off)")
    max_thinking_steps: int = field(0, help="thinking steps before think_end is forced (0: only max_new_tokens)")
    noise: str = field("none", help=f"noise on the concept weights: {', '.join(NOISES)}")
    dirichlet_alpha: float = field(1.0, help="Dirichlet noise: concentration = alpha x weights")
    gumbel_tau: float = field(0.5, help="Gumbel-softmax noise: temperature over the log-weights")

    def __post_init__(self):
        Sampling(self.temperature, self.top_k, self.top_p, self.min_p)  # the same range checks
        if self.max_topk < 1:
            raise ConfigError(f"max_topk: expected >= 1, got {self.max_topk}")
        if self.noise not in NOISES:
            raise ConfigError(f"noise: expected one of {', '.join(NOISES)}, got {self.noise!r}")
        for name in ("cold_stop_steps", "max_thinking_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("dirichlet_alpha", "gumbel_tau"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: expected > 0, got {getattr(self, name)}")


class SoftThinkingPolicy:
    row_state = ("weights_sampling", "text", "seeds", "thinking", "thought", "calm")  # engine.slots

    def __init__(self, lm, config: SoftThinkingConfig, context: DecodeContext):
        rows, device = context.rows, lm.device
        self.lm, self.config, self.seeds = lm, config, context.seeds.to(device)
        self.weights_sampling = Sampling(config.temperature, config.top_k, config.top_p, config.min_p).rows(
            rows, device
        )
        self.text = context.token_policy(lm)
        self.stop = torch.tensor(context.stop_ids, device=device)
        self.think_end = context.think_end
        self.thinking = torch.ones(rows, dtype=torch.bool, device=device)  # [B]
        self.thought = torch.zeros(rows, dtype=torch.long, device=device)  # [B] soft steps taken
        self.calm = torch.zeros(rows, dtype=torch.long, device=device)  # [B] confident steps in a row

    def concept(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The mixed input embedding [n, d] of the rows [n] from their logits [n, V]."""
        cfg = self.config
        logp, ids = filtered_logprobs(logits, self.weights_sampling.take(rows))  # [n, K]
        logp, pick = logp.topk(min(cfg.max_topk, logp.shape[1]), dim=-1)  # [n, k] the largest kept
        ids = ids.gather(-1, pick)
        counters = self.thought[rows]
        if cfg.noise == "gumbel":
            gumbel = row_gumbel(self.seeds[rows], counters, STREAM_NOISE, logp.shape[1]).to(logp.dtype)
            weights = ((logp + gumbel) / cfg.gumbel_tau).softmax(-1)  # dropped tokens stay at -inf: weight 0
        else:
            weights = logp.softmax(-1)  # [n, k] renormalised
            if cfg.noise == "dirichlet":
                weights = row_dirichlet(cfg.dirichlet_alpha * weights, self.seeds[rows], counters, STREAM_NOISE)
        embeds = self.lm.embed(ids)  # [n, k, d] only the kept rows of the embedding matrix
        return (weights.to(embeds.dtype)[..., None] * embeds).sum(1)  # [n, d]

    def step(self, view: StepView) -> StepChoice:
        cfg, b, device = self.config, view.rows.shape[0], view.hidden.device
        tokens = torch.zeros(b, dtype=torch.long, device=device)
        logprobs = torch.zeros(b, device=device)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        embeds, is_embed = None, None
        thinking = self.thinking[view.rows]  # [b]
        think_at = thinking.nonzero().squeeze(1)  # [n]
        if think_at.numel():
            rows = view.rows[think_at]
            logits = self.lm.lm_head(view.hidden[think_at]).float()  # [n, V]
            top1 = logits.argmax(-1)  # [n]
            logp = (logits / (cfg.temperature or 1.0)).log_softmax(-1)  # [n, V] unfiltered
            entropy = -(logp.exp() * logp).sum(-1)  # [n]
            self.calm[rows] = torch.where(entropy < cfg.cold_stop_entropy, self.calm[rows] + 1, 0)
            self.thought[rows] += 1
            ends_reply = torch.isin(top1, self.stop)
            done = top1 == self.think_end[0]
            if cfg.cold_stop_steps:
                done |= self.calm[rows] >= cfg.cold_stop_steps
            if cfg.max_thinking_steps:
                done |= self.thought[rows] > cfg.max_thinking_steps  # this step would be one too many
            done &= ~ends_reply
            embeds = view.hidden.new_zeros((b, view.hidden.shape[-1]))
            embeds[think_at] = self.concept(logits, rows).to(embeds.dtype)
            is_embed = torch.zeros(b, dtype=torch.bool, device=device)
            is_embed[think_at] = ~done & ~ends_reply
            tokens[think_at], logprobs[think_at], finished[think_at] = (
                top1,
                logp.gather(-1, top1[:, None])[:, 0],
                ends_reply,
            )
            self.thinking[rows] = ~done & ~ends_reply
            if bool(done.any()):
                view.force(think_at[done], self.think_end)  # fed from this step on, instead of the concept
        text_at = (~thinking).nonzero().squeeze(1)  # [m]
        if text_at.numel():
            logits = self.lm.lm_head(view.hidden[text_at]).float()  # [m, V]
            ids, lp, done = self.text.choose(logits, view.rows[text_at])
            tokens[text_at], logprobs[text_at], finished[text_at] = ids, lp, done
        return StepChoice(tokens, embeds, is_embed, logprobs, finished)


@register_decoder("soft-thinking")
class SoftThinking(PolicyDecoder):
    config_cls = SoftThinkingConfig

    def policy(self, lm, context: DecodeContext) -> SoftThinkingPolicy:
        return SoftThinkingPolicy(lm, self.config, context)
