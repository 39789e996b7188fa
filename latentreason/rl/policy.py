"""The latent policy of ATP-Latent: sampled rollouts with their log-probabilities, and their recomputation.

A rollout's actions, each with a log-probability:
  latent     z_j ~ N(mean_j, var_j) from the Gaussian head, at every slot the row reached: its used
             latents and, when it stopped by a sampled decision, the z the stop head saw there
  decision   continue/stop sampled from the stop head at each group start the row reached
  token      each answer token, sampled from softmax(logits / temperature)
`sample` records them while rolling out (no grad, in-place cache); `logprobs` recomputes them for the
same actions in one teacher-forced latent pass with gradients. For an unchanged policy the two agree
(tests check 1e-4).

The Gaussian log-density of a d-dimensional z is a sum of d terms, so its changes dwarf every other
action's and its importance ratios explode. `latent_logprob: mean` divides it by d (a per-dimension
log-density); `sum` keeps the exact density (the reference). `latent_logprob_scale` multiplies either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentreason.engine.batch import IGNORE
from latentreason.engine.latent_pass import build_latent_batch, latent_forward
from latentreason.engine.rollout import latent_rollout
from latentreason.errors import ConfigError
from latentreason.methods.atp import STOP

LATENT_LOGPROB = ("mean", "sum")


@dataclass
class ActionLogprobs:
    latent: torch.Tensor  # [B, R] log-density of each drawn z (0 where masked)
    decision: torch.Tensor  # [B, R] log-prob of each stop/continue decision (0 where masked)
    token: torch.Tensor  # [B, T] log-prob of each answer token (0 where masked)

    def flat(self) -> torch.Tensor:
        return torch.cat([self.latent, self.decision, self.token], dim=1)  # [B, 2R+T]


@dataclass
class RolloutBatch:
    prompts: list[list[int]]  # token ids, each ending with <bot>
    num_latents: torch.Tensor  # [B] latents each row used
    thoughts: torch.Tensor  # [B, R] x d: every z drawn, R = latent steps the rollout ran
    latent_mask: torch.Tensor  # [B, R] z whose density is an action of the row
    decision_mask: torch.Tensor  # [B, R] group starts where the row decided
    decision_stop: torch.Tensor  # [B, R] the decision was "stop"
    tokens: torch.Tensor  # [B, T] answer tokens (pad after the stop token)
    lengths: torch.Tensor  # [B] answer tokens, stop token included
    old: ActionLogprobs  # recorded while sampling (or recomputed, see RLConfig.recompute_old_logprobs)
    ref: ActionLogprobs | None = None  # under the frozen starting policy, when the KL term is on

    @property
    def token_mask(self) -> torch.Tensor:
        return torch.arange(self.tokens.shape[1], device=self.tokens.device)[None] < self.lengths[:, None]  # [B, T]

    @property
    def action_mask(self) -> torch.Tensor:
        return torch.cat([self.latent_mask, self.decision_mask, self.token_mask], dim=1)  # [B, 2R+T]

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The rollouts at `rows` (a [M] index tensor), trimmed to what they use."""
        r = int(self.latent_mask[rows].sum(1).max()) if len(rows) else 0
        t = int(self.lengths[rows].max()) if len(rows) else 0

        def trim(logprobs: ActionLogprobs | None) -> ActionLogprobs | None:
            if logprobs is None:
                return None
            return ActionLogprobs(logprobs.latent[rows, :r], logprobs.decision[rows, :r], logprobs.token[rows, :t])

        return RolloutBatch(
            [self.prompts[i] for i in rows.tolist()],
            self.num_latents[rows],
            self.thoughts[rows, :r],
            self.latent_mask[rows, :r],
            self.decision_mask[rows, :r],
            self.decision_stop[rows, :r],
            self.tokens[rows, :t],
            self.lengths[rows],
            trim(self.old),
            trim(self.ref),
        )


def gaussian_logpdf(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, exp(logvar)) per dimension. [.., d] -> [.., d]."""
    return -0.5 * ((z - mean).pow(2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi))


class LatentPolicy:
    """Samples and scores rollouts of an ATP-Latent model (its latent head, stop head and LM)."""

    def __init__(
        self,
        lm,
        method,
        temperature: float = 1.0,
        max_completion_length: int = 16,
        latent_logprob: str = "mean",
        latent_logprob_scale: float = 1.0,
    ):
        if latent_logprob not in LATENT_LOGPROB:
            raise ConfigError(f"latent_logprob: expected one of {LATENT_LOGPROB}, got {latent_logprob!r}")
        if temperature <= 0:
            raise ConfigError(f"temperature: RL samples its answers, so it must be > 0, got {temperature}")
        self.lm, self.method = lm, method
        self.temperature, self.max_completion_length = temperature, max_completion_length
        self.latent_logprob, self.latent_logprob_scale = latent_logprob, latent_logprob_scale
        self.c = method.config.c_thought
        self.max_latents = method.config.max_latent_stage * self.c

    def latent_density(self, z, mean, logvar) -> torch.Tensor:
        per_dim = gaussian_logpdf(z.float(), mean.float(), logvar.float())  # [.., d]
        reduced = per_dim.mean(-1) if self.latent_logprob == "mean" else per_dim.sum(-1)  # [..]
        return reduced * self.latent_logprob_scale

    def decision_logprob(self, z, stop) -> torch.Tensor:
        logp = self.method.stop_head(z).float().log_softmax(-1)  # [.., 2]
        return logp.gather(-1, stop.long()[..., None]).squeeze(-1)  # [..]

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None) -> RolloutBatch:
        method, c = self.method, self.c
        drawn = []  # per latent step: (z, mean, logvar), every row

        def thought(hidden, j):
            mean, logvar = method.latent_head(hidden)  # [B, d], [B, d]
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + (0.5 * logvar).exp() * noise  # [B, d]
            drawn.append((z, mean, logvar))
            return z, (mean, logvar)

        def controller(j, hidden, z, extra):
            if j % c:
                return torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
            probs = method.stop_head(z).float().softmax(-1)  # [B, 2]
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1) == STOP

        out = latent_rollout(
            self.lm,
            prompts,
            thought,
            controller,
            self.max_latents,
            self.max_completion_length,
            temperature=self.temperature,
            generator=generator,
            return_logprobs=True,
        )
        bsz, device = len(prompts), out.tokens.device
        if drawn:
            z, mean, logvar = (torch.stack(parts, 1) for parts in zip(*drawn))  # [B, R, d] each
        else:  # max_latent_stage 0: no latent steps at all
            z = mean = logvar = torch.zeros(bsz, 0, self.lm.model.config.hidden_size, device=device)
        slots = torch.arange(z.shape[1], device=device)[None]  # [1, R]
        used = out.num_latents[:, None]  # [B, 1]
        # Rows stop only at group starts, so slot `used` (when it was run) is where the row said stop.
        latent_mask = slots <= used  # [B, R]
        decision_mask = latent_mask & (slots % c == 0)  # [B, R]
        decision_stop = slots == used  # [B, R]
        zero = torch.zeros(bsz, z.shape[1], device=device)
        old = ActionLogprobs(
            torch.where(latent_mask, self.latent_density(z, mean, logvar), zero),
            torch.where(decision_mask, self.decision_logprob(z, decision_stop), zero),
            out.token_logprobs,
        )
        return RolloutBatch(
            prompts, out.num_latents, z, latent_mask, decision_mask, decision_stop, out.tokens, out.lengths, old
        )

    def logprobs(self, batch: RolloutBatch) -> ActionLogprobs:
        """The same actions' log-probs under the current weights, in one teacher-forced pass (with grad)."""
        lm = self.lm
        lengths = batch.lengths.tolist()
        suffixes = [[lm.eot_id] + row[:n] for row, n in zip(batch.tokens.tolist(), lengths)]
        labels = [[IGNORE] + s[1:] for s in suffixes]
        latent_batch = build_latent_batch(batch.prompts, batch.num_latents.tolist(), suffixes, labels, lm.pad_id).to(
            lm.device
        )
        thoughts = batch.thoughts

        def feed(hidden, j):  # the drawn z, not a new sample
            return thoughts[:, j].to(hidden.dtype), None

        out = latent_forward(lm, latent_batch, feed)
        before = torch.cat([out.bot_hidden[:, None], out.latent_hidden], dim=1)  # [B, N+1, d] hidden before slot j
        r = thoughts.shape[1]
        mean, logvar = self.method.latent_head(before[:, :r])  # [B, R, d] each
        zero = torch.zeros(thoughts.shape[:2], device=thoughts.device)
        latent = torch.where(batch.latent_mask, self.latent_density(thoughts, mean, logvar), zero)
        decision = torch.where(batch.decision_mask, self.decision_logprob(thoughts, batch.decision_stop), zero)
        t = batch.tokens.shape[1]
        logits = lm.lm_head(out.suffix_hidden[:, :t]).float() / self.temperature  # [B, T, V]: <eot>.. predict tokens
        token = logits.log_softmax(-1).gather(-1, batch.tokens[..., None]).squeeze(-1)  # [B, T]
        token = torch.where(batch.token_mask, token, torch.zeros_like(token))
        return ActionLogprobs(latent, decision, token)
