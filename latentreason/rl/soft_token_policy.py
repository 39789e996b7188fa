"""The GRPO policy of a pretrained chat model that thinks in noisy soft tokens (Soft Tokens, Hard Truths).

While thinking, a row feeds x = mu + sigma * eps, mu the top-k mixture of softmax(logits / think_temperature)
(engine.mixture), eps ~ N(0, I) keyed by (row seed, step), never by batch. "soft" thinks at temperature 0.5,
"fuzzy" near 0 (mu is then almost the top token's embedding). Thinking ends when the row's most probable token
is the first of the prompt's think-end text (the whole text is then fed as forced tokens) or after
`max_thinking` steps (the text is forced); the answer is then sampled as hard tokens until a stop token.

Actions: each thinking input, with the Gaussian log-density of x around mu (reduced over d as RLConfig's
`latent_logprob` says), and each answer token, with its log-prob. Every fed input is known afterwards, so
`logprobs` recomputes mu and the token log-probs in one teacher-forced call (no backpropagation through the
rollout). The reply's text is each step's token: the most probable one while thinking, then the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.engine.loss import chosen_logprobs, isotropic_logdensity, soft_input_logdensity
from latentreason.engine.mixture import topk_mixture
from latentreason.engine.noise import row_normal
from latentreason.engine.sampling import draw_ids
from latentreason.engine.steps import EMBED, TOKEN, StepChoice, StepView, prefill, run_steps
from latentreason.rl.policy import ActionLogprobs
from latentreason.rl.rewards import Completion
from latentreason.rl.token_policy import reply_completions, row_seeds, teacher_forced_states

THINK_TEMPERATURE = {"soft": 0.5, "fuzzy": 1e-4}  # the paper's CoT temperatures
NOISE_STREAM = 11  # row_normal's stream for the thinking noise (distinct from the token draws)


@dataclass
class SoftTokenRollouts:
    prompts: list[list[int]]  # token ids of each row's chat prompt
    kinds: torch.Tensor  # [B, T] int8: EMBED (a thinking input), TOKEN (an answer token), FORCED, NONE
    tokens: torch.Tensor  # [B, T] each step's token (thinking: the most probable one), pad after the last step
    inputs: torch.Tensor  # [B, T, d] the noisy input fed at each thinking step (zeros elsewhere)
    lengths: torch.Tensor  # [B] steps, the stop token included
    old: ActionLogprobs
    ref: ActionLogprobs | None = None

    @property
    def thinking_mask(self) -> torch.Tensor:
        return self.kinds == EMBED  # [B, T]

    @property
    def token_mask(self) -> torch.Tensor:
        return self.kinds == TOKEN  # [B, T] the sampled answer tokens

    @property
    def action_mask(self) -> torch.Tensor:
        return torch.cat([self.thinking_mask, self.token_mask], dim=1)  # [B, 2T], as ActionLogprobs.flat()

    def select(self, rows: torch.Tensor) -> SoftTokenRollouts:
        """The rollouts at `rows` [M], trimmed to their longest."""
        t = int(self.lengths[rows].max()) if len(rows) else 0

        def trim(logprobs: ActionLogprobs | None) -> ActionLogprobs | None:
            if logprobs is None:
                return None
            return ActionLogprobs(logprobs.latent[rows, :t], logprobs.decision[rows], logprobs.token[rows, :t])

        prompts = [self.prompts[i] for i in rows.tolist()]
        kinds, tokens, inputs = self.kinds[rows, :t], self.tokens[rows, :t], self.inputs[rows, :t]
        return SoftTokenRollouts(prompts, kinds, tokens, inputs, self.lengths[rows], trim(self.old), trim(self.ref))

    def completions(self, tokenizer, answer_mode: str) -> list[Completion]:
        """What the rewards read: each reply's text (thinking as its most probable tokens, then the answer)."""
        return reply_completions(tokenizer, self.tokens, self.lengths, answer_mode)

    def metrics(self) -> dict:
        return {
            "completions/mean_length": float(self.lengths.float().mean()),
            "soft/thinking_steps": float(self.thinking_mask.sum(1).float().mean()),
        }


@dataclass(frozen=True)
class SoftThinking:
    """How rows think: temperature of mu's distribution, its top-k, the noise's std, and the step limit."""

    temperature: float
    top_k: int
    sigma: float
    max_thinking: int
    think_end: list[int]  # the text that ends thinking, as token ids


class SoftTokenSteps:
    """The step policy while sampling: noisy soft inputs while a row thinks, then sampled answer tokens."""

    def __init__(self, lm, thinking: SoftThinking, temperature: float, stop_ids: list[int], max_steps: int, seeds):
        rows, device = seeds.shape[0], lm.device
        self.lm, self.thinking, self.temperature, self.max_steps = lm, thinking, temperature, max_steps
        self.stop = torch.tensor(stop_ids, device=device)
        self.seeds = seeds  # [B]
        self.active = torch.ones(rows, dtype=torch.bool, device=device)  # [B] still thinking
        self.inputs = lm.embed.weight.new_zeros(rows, max_steps, lm.embed.weight.shape[1])  # [B, T, d]

    def step(self, view: StepView) -> StepChoice:
        think, rows, t = self.thinking, view.rows, view.t
        logits = view.logits.float()  # [b, V]
        counters = torch.full_like(rows, t)  # every row has taken t steps: they start together
        logp = (logits / self.temperature).log_softmax(-1)  # [b, V]
        ids = draw_ids(logp, self.seeds[rows], counters, 1)[:, 0]  # [b] an answer token
        logprobs = logp.gather(-1, ids[:, None]).squeeze(1)  # [b]
        thinking = self.active[rows]  # [b]
        top = logits.argmax(-1)  # [b]
        ending = thinking & ~view.queue.pending(rows) & ((top == think.think_end[0]) | (t >= think.max_thinking))
        view.force(ending.nonzero().squeeze(1), think.think_end)  # fed from this step on, as forced tokens
        self.active[rows[ending]] = False
        soft = thinking & ~ending  # [b]
        embeds = view.hidden.new_zeros(view.hidden.shape)  # [b, d]
        at = soft.nonzero().squeeze(1)  # [n]
        if at.numel():
            mean = topk_mixture(self.lm.embed, logits[at] / think.temperature, think.top_k)  # [n, d]
            noise = row_normal(self.seeds[rows[at]], counters[at], NOISE_STREAM, mean.shape[-1])  # [n, d] float64
            fed = (mean.double() + think.sigma * noise).to(embeds.dtype)  # [n, d] exactly what the model reads
            embeds[at] = fed
            self.inputs[rows[at], t] = fed.to(self.inputs.dtype)
            logprobs[at] = isotropic_logdensity(fed, mean, think.sigma)  # [n] as the recomputation scores it
        tokens = torch.where(thinking, top, ids)  # [b]
        finished = (~thinking & torch.isin(ids, self.stop)) | (t + 1 >= self.max_steps)
        return StepChoice(tokens, embeds=embeds, is_embed=soft, logprobs=logprobs, finished=finished)


class SoftTokenPolicy:
    """Samples and scores soft-token rollouts of a chat model (`prompt`: a PromptBuilder) under an RLConfig whose
    think_inputs is soft or fuzzy. A thinking input's log-density is reduced over d as `latent_logprob` says
    (mean or sum) and scaled by `latent_logprob_scale`, as LatentPolicy's latents are."""

    def __init__(self, lm, prompt, config):
        self.lm, self.prompt, self.mode = lm, prompt, config.think_inputs
        self.temperature, self.max_completion_length = config.temperature, config.max_completion_length
        self.stop_ids = prompt.stop_ids()
        # sigma: soft_noise times the root-mean-square entry of the embedding matrix, so the noise's norm is about
        # soft_noise times a typical token embedding's, whatever the model's scale.
        rms = float(lm.embed.weight.detach().float().pow(2).mean().sqrt())
        self.thinking = SoftThinking(
            config.think_temperature or THINK_TEMPERATURE[self.mode],
            config.soft_top_k,
            config.soft_noise * rms,
            config.thinking_steps,
            prompt.think_ids()[1],
        )
        self.latent_logprob, self.latent_scale = config.latent_logprob, config.latent_logprob_scale

    def prompts(self, problems) -> list[list[int]]:
        return [self.prompt.ids(p.question) for p in problems]

    def reduce(self, density: torch.Tensor) -> torch.Tensor:
        """A thinking input's log-density as an action's: per dimension (mean) or whole (sum), scaled."""
        d = self.lm.embed.weight.shape[1]
        return density / (d if self.latent_logprob == "mean" else 1) * self.latent_scale

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None) -> SoftTokenRollouts:
        seeds = row_seeds(len(prompts), generator, self.lm.device)
        steps = SoftTokenSteps(
            self.lm, self.thinking, self.temperature, self.stop_ids, self.max_completion_length, seeds
        )
        trace = run_steps(self.lm, prefill(self.lm, prompts), steps, self.max_completion_length, len(prompts))
        lengths = trace.steps  # [B]
        t = int(lengths.max()) if lengths.numel() else 0
        kinds, logprobs = trace.kind[:, :t], trace.logprobs[:, :t].float()  # [B, T] each
        old = self.actions(torch.where(kinds == EMBED, logprobs, 0.0), torch.where(kinds == TOKEN, logprobs, 0.0))
        return SoftTokenRollouts(prompts, kinds, trace.tokens[:, :t], steps.inputs[:, :t], lengths, old)

    def actions(self, density: torch.Tensor, token: torch.Tensor) -> ActionLogprobs:
        """ActionLogprobs of thinking densities [B, T] (raw, summed over d) and answer token log-probs [B, T]."""
        return ActionLogprobs(self.reduce(density), density.new_zeros((density.shape[0], 0)), token)

    def logprobs(self, rollouts: SoftTokenRollouts) -> ActionLogprobs:
        """The same actions' log-probs under the current weights, in one teacher-forced call (with grad)."""
        lm, kinds = self.lm, rollouts.kinds  # [B, T]
        fed = torch.where(
            (kinds == EMBED)[:, :-1, None], rollouts.inputs[:, :-1], lm.embed(rollouts.tokens[:, :-1])
        )  # [B, T-1, d]
        predicting = teacher_forced_states(lm, rollouts.prompts, fed, rollouts.lengths)  # [B, T, d]
        think = self.thinking
        density = soft_input_logdensity(
            lm.lm_head, lm.embed, predicting, rollouts.inputs, rollouts.thinking_mask, think.temperature,
            think.top_k, think.sigma,
        )  # fmt: skip
        token = chosen_logprobs(lm.lm_head, predicting, rollouts.tokens, rollouts.token_mask, self.temperature)
        return self.actions(density, token)
