"""The GRPO policy of a pretrained causal LM that thinks in tokens: plain text, or Multiplex Thinking.

Every step a row draws `width` (K) tokens i.i.d. from softmax(logits / temperature) and feeds the mean of
their embeddings as its next input (Multiplex Thinking); K = 1 is ordinary token sampling, token for token
and log-prob for log-prob the engine's `TokenPolicy` with the same row seeds. A step's action log-prob is
the sum of its K samples' log-probs. The reply's text is every step's first sample up to the stop token
(recorded, not fed), which is also what rewards read.

Sampling runs on the step engine (one prefill, rows leave the batch when they stop). Every input a row fed
is known afterwards, so `logprobs` recomputes all steps in one teacher-forced call over prompt + inputs,
with the token log-probs taken in chunks (`chosen_logprobs`), never [B, T, V] at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.engine.batch import left_pad, positions_from_mask
from latentreason.engine.loss import chosen_logprobs
from latentreason.engine.sampling import draw_ids
from latentreason.engine.steps import StepChoice, StepView, prefill, run_steps
from latentreason.errors import ConfigError
from latentreason.evaluation.prompting import PromptBuilder
from latentreason.model.pretrained import generation_stop_ids
from latentreason.rl.policy import ActionLogprobs
from latentreason.rl.rewards import Completion


@dataclass
class TokenRollouts:
    prompts: list[list[int]]  # token ids of each row's chat prompt
    samples: torch.Tensor  # [B, T, K] the K tokens drawn at each step (pad after the row's last step)
    lengths: torch.Tensor  # [B] steps, the stop token included
    old: ActionLogprobs  # recorded while sampling (or recomputed, see RLConfig.recompute_old_logprobs)
    ref: ActionLogprobs | None = None

    @property
    def tokens(self) -> torch.Tensor:
        return self.samples[..., 0]  # [B, T] the reply

    @property
    def token_mask(self) -> torch.Tensor:
        return torch.arange(self.samples.shape[1], device=self.samples.device)[None] < self.lengths[:, None]

    @property
    def action_mask(self) -> torch.Tensor:
        return self.token_mask  # [B, T]: one action per step (ActionLogprobs.flat() is its token column)

    def select(self, rows: torch.Tensor) -> TokenRollouts:
        """The rollouts at `rows` [M], trimmed to their longest."""
        t = int(self.lengths[rows].max()) if len(rows) else 0

        def trim(logprobs: ActionLogprobs | None) -> ActionLogprobs | None:
            if logprobs is None:
                return None
            return ActionLogprobs(logprobs.latent[rows], logprobs.decision[rows], logprobs.token[rows, :t])

        prompts = [self.prompts[i] for i in rows.tolist()]
        return TokenRollouts(prompts, self.samples[rows, :t], self.lengths[rows], trim(self.old), trim(self.ref))

    def completions(self, tokenizer, answer_mode: str) -> list[Completion]:
        """What the rewards read: each reply's text (no latents)."""
        return reply_completions(tokenizer, self.tokens, self.lengths, answer_mode)

    def metrics(self) -> dict:
        mask = self.token_mask  # [B, T]
        distinct = (self.samples != self.samples[..., :1]).any(-1)[mask]  # a step whose K samples differ
        return {
            "completions/mean_length": float(self.lengths.float().mean()),
            "multiplex/mixed_steps": float(distinct.float().mean()) if distinct.numel() else 0.0,
        }


def reply_completions(tokenizer, tokens: torch.Tensor, lengths: torch.Tensor, answer_mode: str) -> list[Completion]:
    """Each row's first `lengths` [B] tokens [B, T] as text: what the rewards of a chat model's rollouts read."""
    replies = [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]
    texts, no_latents = tokenizer.batch_decode(replies, skip_special_tokens=True), torch.zeros((0, 0))
    return [Completion(text, no_latents, answer_mode) for text in texts]


def row_seeds(rows: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """[rows] seeds of the rows' draws, taken from `generator` (a rollout then depends on its seed, not its batch)."""
    gen_device = generator.device if generator is not None else None
    return torch.randint(0, 2**62, (rows,), generator=generator, device=gen_device).to(device)


def chat_prompt(lm, config) -> PromptBuilder:
    """The chat prompt of a pretrained model under an RL config: its template, system prompt and stop ids."""
    return PromptBuilder(
        lm.tokenizer,
        system_prompt=config.system_prompt or None,
        template=config.prompt_template,
        extra_stop_ids=generation_stop_ids(lm),
    )


def token_only(token: torch.Tensor) -> ActionLogprobs:
    empty = token.new_zeros((token.shape[0], 0))  # [B, 0]: no latent or stop actions
    return ActionLogprobs(empty, empty, token)


class MultiplexSteps:
    """The step policy while sampling: K draws per row and step, keyed by (row seed, step), never by batch."""

    def __init__(self, lm, width: int, temperature: float, stop_ids: list[int], max_steps: int, seeds: torch.Tensor):
        self.lm, self.width, self.temperature, self.max_steps = lm, width, temperature, max_steps
        self.stop = torch.tensor(stop_ids, device=lm.device)
        self.seeds = seeds  # [B]
        self.samples = torch.full((seeds.shape[0], max_steps, width), lm.pad_id, dtype=torch.long, device=lm.device)

    def step(self, view: StepView) -> StepChoice:
        logp = (view.logits / self.temperature).log_softmax(-1)  # [b, V]
        counters = torch.full_like(view.rows, view.t)  # every row has taken t steps: they start together
        picks = draw_ids(logp, self.seeds[view.rows], counters, self.width)  # [b, K]
        self.samples[view.rows, view.t] = picks
        first = picks[:, 0]  # [b] the reply's token
        finished = torch.isin(first, self.stop) | (view.t + 1 >= self.max_steps)
        logprobs = logp.gather(-1, picks).sum(-1)  # [b]
        if self.width == 1:
            return StepChoice(first, logprobs=logprobs, finished=finished)
        embeds = self.lm.embed(picks).mean(1)  # [b, d] the multiplexed input
        return StepChoice(
            first, embeds=embeds, is_embed=torch.ones_like(finished), logprobs=logprobs, finished=finished
        )


class MultiplexPolicy:
    """Samples and scores token rollouts of a chat model (`prompt`: a PromptBuilder; `width` K >= 1)."""

    def __init__(self, lm, prompt, width: int = 1, temperature: float = 1.0, max_completion_length: int = 256):
        if width < 1:
            raise ConfigError(f"multiplex_width: expected an integer >= 1 (1 = plain tokens), got {width}")
        if temperature <= 0:
            raise ConfigError(f"temperature: RL samples its steps, so it must be > 0, got {temperature}")
        self.lm, self.prompt, self.width = lm, prompt, width
        self.temperature, self.max_completion_length = temperature, max_completion_length
        self.stop_ids = prompt.stop_ids()
        if not self.stop_ids:
            raise ConfigError("the model's tokenizer names no end-of-turn or eos token: a reply could never end")

    def prompts(self, problems) -> list[list[int]]:
        return [self.prompt.ids(p.question) for p in problems]

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None) -> TokenRollouts:
        """Rollouts with their steps' log-probs; `generator` draws the row seeds."""
        seeds = row_seeds(len(prompts), generator, self.lm.device)
        steps = MultiplexSteps(self.lm, self.width, self.temperature, self.stop_ids, self.max_completion_length, seeds)
        trace = run_steps(self.lm, prefill(self.lm, prompts), steps, self.max_completion_length, len(prompts))
        lengths = trace.steps  # [B]
        t = int(lengths.max()) if lengths.numel() else 0
        old = token_only(trace.logprobs[:, :t].float())
        return TokenRollouts(prompts, steps.samples[:, :t], lengths, old)

    def logprobs(self, rollouts: TokenRollouts) -> ActionLogprobs:
        """The same steps' log-probs under the current weights, in one teacher-forced call (with grad)."""
        lm, samples = self.lm, rollouts.samples  # [B, T, K]
        inputs = lm.embed(samples[:, :-1]).mean(2)  # [B, T-1, d] (K = 1: the token's own embedding)
        predicting = teacher_forced_states(lm, rollouts.prompts, inputs, rollouts.lengths)  # [B, T, d]
        action = rollouts.token_mask
        token = chosen_logprobs(lm.lm_head, predicting, samples, action, self.temperature)  # [B, T]: K summed
        return token_only(token)


def teacher_forced_states(lm, prompts: list[list[int]], inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T, d] the hidden state each of a rollout's T steps was chosen from, in one call over prompt + the
    inputs it fed. inputs: [B, T-1, d] (the last step, a stop token or the length limit, is never fed);
    lengths: [B] steps of each row."""
    batch = left_pad(prompts, lm.pad_id)
    prompt_ids, prompt_mask = batch["input_ids"].to(lm.device), batch["attention_mask"].to(lm.device)  # [B, P]
    fed_mask = torch.arange(inputs.shape[1], device=lm.device)[None] < (lengths - 1)[:, None]  # [B, T-1]
    embeds = torch.cat([lm.embed(prompt_ids), inputs.to(lm.embed.weight.dtype)], dim=1)  # [B, P+T-1, d]
    mask = torch.cat([prompt_mask, fed_mask.long()], dim=1)  # [B, P+T-1]
    hidden = lm.backbone(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False
    ).last_hidden_state  # [B, P+T-1, d]
    return hidden[:, prompt_ids.shape[1] - 1 :]  # [B, T, d]
