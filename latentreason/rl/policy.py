"""The latent policy of ATP-Latent and CoLaR: sampled rollouts with their log-probabilities, and their recomputation.

A rollout's actions, each with a log-probability:
  latent     z_j ~ N(mean_j, var_j) from the Gaussian latent head at every slot the row used (fed as
             z_j x scale) and, for ATP-Latent, the z its stop head saw where the row stopped
  decision   continue/stop, sampled at each slot where the method decides (see the actions below)
  token      each answer token, sampled from softmax(logits / temperature)
`sample` records them while rolling out (no grad, in-place cache); `logprobs` recomputes them for the
same actions in one teacher-forced latent pass with gradients. For an unchanged policy the two agree
(tests check 1e-4).

What differs per method is the method's own actions (`method.latent_actions`, methods/latent_actions.py):
its prompt, how z is fed and the stop rule its solver also uses (ATPActions in methods/atp.py: the stop
head on z at the first slot of every c_thought group; CoLaRActions in methods/colar.py: the LM head's
probability of `<eot>` before every slot is the probability of stopping).

The Gaussian log-density of a d-dimensional z is a sum of d terms, so its changes dwarf every other
action's and its importance ratios explode. `latent_logprob: mean` divides it by d (a per-dimension
log-density); `sum` keeps the exact density (the reference). `latent_logprob_scale` multiplies either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentreason.engine.batch import IGNORE
from latentreason.engine.latent_pass import LatentBatch, build_latent_batch, known_latent_forward
from latentreason.engine.loss import chosen_logprobs
from latentreason.engine.rollout import latent_rollout
from latentreason.engine.sampling import Sampling
from latentreason.errors import ConfigError
from latentreason.rl.rewards import Completion

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
    thoughts: torch.Tensor  # [B, R] x d: every thought drawn, as fed (z x scale), R = latent steps the rollout ran
    latent_mask: torch.Tensor  # [B, R] z whose density is an action of the row
    decision_mask: torch.Tensor  # [B, R] slots where the row decided
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

    def completions(self, tokenizer, answer_mode: str) -> list[Completion]:
        """What the rewards read: each answer's text and the thoughts the row fed."""
        texts = tokenizer.batch_decode(self.tokens.cpu(), skip_special_tokens=True)
        return [
            Completion(text, self.thoughts[i, : int(n)], answer_mode)
            for i, (text, n) in enumerate(zip(texts, self.num_latents.tolist()))
        ]

    def metrics(self) -> dict:
        fed = torch.arange(self.thoughts.shape[1], device=self.thoughts.device)[None] < self.num_latents[:, None]
        norms = self.thoughts.norm(dim=-1)[fed]  # [fed thoughts]
        return {
            "latents/mean_active": float(self.num_latents.float().mean()),
            "latents/norm": float(norms.mean()) if norms.numel() else 0.0,
            "completions/mean_length": float(self.lengths.float().mean()),
        }

    def select(self, rows: torch.Tensor) -> RolloutBatch:
        """The rollouts at `rows` (a [M] index tensor), trimmed to what they use."""
        # Both masks are prefixes of the slots (ATP's decisions lie inside its latents), so their union's length.
        r = int((self.latent_mask | self.decision_mask)[rows].sum(1).max()) if len(rows) else 0
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
    """Samples and scores rollouts of a latent model through its method's actions (latent head, stop rule)."""

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
        self.lm, self.actions = lm, method.latent_actions(lm, method)
        self.temperature, self.max_completion_length = temperature, max_completion_length
        self.latent_logprob, self.latent_logprob_scale = latent_logprob, latent_logprob_scale

    def prompts(self, problems) -> list[list[int]]:
        return [self.actions.prompt(p) for p in problems]

    def latent_density(self, thought, mean, logvar) -> torch.Tensor:
        per_dim = gaussian_logpdf(thought.float() / self.actions.scale, mean.float(), logvar.float())  # [.., d]
        reduced = per_dim.mean(-1) if self.latent_logprob == "mean" else per_dim.sum(-1)  # [..]
        return reduced * self.latent_logprob_scale

    def latent_and_decision(
        self, thoughts, mean, logvar, before, latent_mask, decision_mask, decision_stop
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the latent and decision actions, [B, R] each (0 where masked).

        thoughts, mean, logvar, before: [B, R, d] (before: the hidden state before each slot); masks [B, R].
        Decisions are scored only where made: CoLaR's go through the LM head, [K, V] rather than [B, R, V].
        """
        zero = torch.zeros(thoughts.shape[:2], device=thoughts.device)  # [B, R]
        latent = torch.where(latent_mask, self.latent_density(thoughts, mean, logvar), zero)
        logits = self.actions.stop_logits(before[decision_mask], thoughts[decision_mask])  # [K, 2]
        stop = decision_stop[decision_mask].long()[:, None]  # [K, 1]
        return latent, zero.masked_scatter(decision_mask, logits.log_softmax(-1).gather(-1, stop).squeeze(-1))

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None) -> RolloutBatch:
        """Rollouts with their actions' log-probs. `generator` draws the thoughts' noise, the stop decisions
        and the answer tokens' row seeds."""
        acts, device = self.actions, self.lm.device
        batch, width, d = len(prompts), acts.max_latents, self.lm.model.config.hidden_size
        # What each drawn thought came from, per row and slot: (mean, logvar, hidden before the slot).
        drawn_from = self.lm.embed.weight.new_zeros((3, batch, width, d))  # [3, B, N, d]

        def thought(hidden, j):
            mean, logvar = acts.latent_head(hidden)  # [b, d], [b, d]
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            return (mean + (0.5 * logvar).exp() * noise) * acts.scale, (mean, logvar)  # [b, d]

        def record(rows, j, hidden, z, extra):
            mean, logvar = extra
            drawn_from[:, rows, j] = torch.stack([mean, logvar, hidden]).to(drawn_from.dtype)

        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=generator.device if generator else None)
        out = latent_rollout(
            self.lm,
            prompts,
            thought,
            acts.controller(sample=True, generator=generator),
            acts.max_latents,
            self.max_completion_length,
            sampling=Sampling(temperature=self.temperature),
            seeds=seeds.to(device),
            on_thought=record,
        )
        fed = out.drawn  # [B, R, d] every thought drawn
        mean, logvar, before = drawn_from[:, :, : fed.shape[1]].to(fed.dtype).unbind(0)  # [B, R, d] each
        slots = torch.arange(fed.shape[1], device=device)[None]  # [1, R]
        used = out.num_latents[:, None]  # [B, 1]
        # A row stops only where it decides, so slot `used` (when it was run) is where it said stop.
        decision_stop = slots == used  # [B, R]
        decision_mask = (slots <= used) & (slots % acts.group == 0)  # [B, R]
        latent_mask = (slots < used) | (decision_stop & acts.stop_reads_latent)  # [B, R]
        masks = (latent_mask, decision_mask, decision_stop)
        old = ActionLogprobs(*self.latent_and_decision(fed, mean, logvar, before, *masks), out.token_logprobs)
        return RolloutBatch(prompts, out.num_latents, fed, *masks, out.tokens, out.lengths, old)

    def teacher_forced_batch(self, batch: RolloutBatch) -> LatentBatch:
        """The rollouts as a latent batch: prompt, each row's latent slots, then <eot> and its answer tokens."""
        lm = self.lm
        lengths = batch.lengths.tolist()
        suffixes = [[lm.eot_id] + row[:n] for row, n in zip(batch.tokens.tolist(), lengths)]
        labels = [[IGNORE] + s[1:] for s in suffixes]
        return build_latent_batch(batch.prompts, batch.num_latents.tolist(), suffixes, labels, lm.pad_id).to(lm.device)

    def logprobs(self, batch: RolloutBatch) -> ActionLogprobs:
        """The same actions' log-probs under the current weights, in one teacher-forced pass (with grad)."""
        lm = self.lm
        # The thoughts are known, so one call over prefix, thoughts and <eot> + answer gives every state.
        out = known_latent_forward(lm, self.teacher_forced_batch(batch), batch.thoughts)
        before = torch.cat([out.bot_hidden[:, None], out.latent_hidden], dim=1)  # [B, N+1, d] hidden before slot j
        before = before[:, : batch.thoughts.shape[1]]  # [B, R, d]
        mean, logvar = self.actions.latent_head(before)  # [B, R, d] each
        masks = (batch.latent_mask, batch.decision_mask, batch.decision_stop)
        latent, decision = self.latent_and_decision(batch.thoughts, mean, logvar, before, *masks)
        t = batch.tokens.shape[1]
        # <eot> and the answer tokens predict the answer tokens; chunked, never [B, T, V] at once.
        token = chosen_logprobs(lm.lm_head, out.suffix_hidden[:, :t], batch.tokens, batch.token_mask, self.temperature)
        return ActionLogprobs(latent, decision, token)
