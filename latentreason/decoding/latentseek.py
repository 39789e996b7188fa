"""LatentSeek (arXiv 2505.13308): test-time policy gradient on the hidden states behind the first part of a reply.

1. Attempt: each row decodes on the step engine (the context's sampling; greedy by default), keeping the hidden
   state every token was chosen from (the pre-LM-head state: lm_head(z_t) gives token t's logits).
2. Latents: z = those states of the first min(floor(rho x n), max_latent_tokens) of the row's n generated tokens
   (a final stop token not counted). A row with none keeps its attempt.
3. Reward R of the reply: the model's self-verification, a user's verifier, or the oracle (verify.py). A row
   whose R is above `reward_threshold` stops.
4. Update: one Adam step (lr) on each running row's z for the loss -R x sum_t log softmax(lm_head(z_t))[x_t],
   x = the tokens z decoded to (REINFORCE: a negative R pushes them down, a positive one up).
5. x = the tokens lm_head(z) gives, drawn as the row draws (greedy: the argmax, the reference's choice;
   sampled: the row's own draws at steps 0..n-1, so unchanged latents give back the attempt), cut after a stop
   token; prefill prompt + x and continue on the step engine with the context's sampling for the rest of
   `max_new_tokens` (x counts in it); the new reply gets its reward; back to 4, at most `iterations` updates.

The reply kept is the last one decoded (as the reference code does); its first len(x) steps are traced as
tokens with the log-probs the row's sampling gives them, as the engine records a token. Each row has its own
z, reward and Adam state (one parameter per row, so a stopped row is never touched), so a row's result does
not depend on its batch. With `iterations: 0` the reply is the attempt: plain decoding, token for token.

The oracle reward reads the reference answers: its results are labelled `latentseek(oracle)` (the decoder's
`name` and every generation's `decoder`) and measure what a perfect verifier would allow, not the method.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.decoding.base import DecodeContext, Decoder, Generation, register_decoder
from latentreason.decoding.prompts import CHAT_TEMPLATE
from latentreason.decoding.verify import SelfVerification, Verifier, oracle_reward
from latentreason.engine.decode import TokenPolicy
from latentreason.engine.sampling import RowSampling, sample_tokens
from latentreason.engine.steps import NONE, TOKEN, Trace, prefill, run_steps
from latentreason.errors import ConfigError

REWARDS = ("self", "verifier", "oracle")


@dataclass
class LatentSeekConfig:
    rho: float = field(0.1, help="fraction of the attempt's tokens whose hidden states are optimised")
    max_latent_tokens: int = field(300, help="at most this many optimised positions per reply")
    lr: float = field(0.03, help="Adam learning rate on the latents")
    iterations: int = field(10, help="policy-gradient updates per row at most (0: the attempt, unchanged)")
    reward_threshold: float = field(-0.2, help="a row stops once its reward is above this")
    reward: str = field(
        "self",
        help="self (the model verifies its reply), verifier (a function given to the decoder), "
        "oracle (the reference answers: analysis only, labelled latentseek(oracle))",
    )
    verify_tokens: int = field(256, help="self reward: tokens per verification reply")
    format_pattern: str = field("", help="self reward: regex the reply must match (else 2 more weight fails)")
    chat_template: str = field("auto", help=f"self reward: prompts as a chat user turn: {', '.join(CHAT_TEMPLATE)}")

    def __post_init__(self):
        checks = {
            "rho": (0 < self.rho <= 1, "in (0, 1]"),
            "max_latent_tokens": (self.max_latent_tokens >= 1, ">= 1"),
            "lr": (self.lr > 0, "> 0"),
            "iterations": (self.iterations >= 0, ">= 0"),
            "verify_tokens": (self.verify_tokens >= 1, ">= 1"),
            "reward": (self.reward in REWARDS, f"one of {', '.join(REWARDS)}"),
            "chat_template": (self.chat_template in CHAT_TEMPLATE, f"one of {', '.join(CHAT_TEMPLATE)}"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ConfigError(f"{name}: expected {expected}, got {getattr(self, name)!r}")
        try:
            re.compile(self.format_pattern)
        except re.error as err:
            raise ConfigError(f"format_pattern: not a regular expression ({err})") from None


@dataclass
class LatentSeekGeneration(Generation):
    rewards: torch.Tensor  # [B] float64 reward of each kept reply
    updates: torch.Tensor  # [B] policy-gradient updates each row made
    latent_tokens: torch.Tensor  # [B] positions optimised per row
    decoder: str  # "latentseek", or "latentseek(oracle)" when the reward read the reference answers


def policy_loss(lm, latents: list[torch.Tensor], tokens: list[torch.Tensor], rewards: torch.Tensor) -> torch.Tensor:
    """-sum_b R_b sum_t log softmax(lm_head(z_bt))[x_bt]: the REINFORCE loss of each row's latents [n_b, d] with
    the tokens x_b [n_b] they decoded to and the reward R_b (rewards [b]) of the reply they led to."""
    z = torch.cat(latents)  # [N, d]
    logp = lm.lm_head(z.to(next(lm.lm_head.parameters()).dtype)).double().log_softmax(-1)  # [N, V]
    per_token = logp.gather(-1, torch.cat(tokens)[:, None].to(logp.device)).squeeze(-1)  # [N]
    weights = torch.cat([r.expand(len(z_b)) for r, z_b in zip(rewards.double(), latents, strict=True)])  # [N]
    return -(weights.to(per_token.device) * per_token).sum()


@torch.no_grad()
def latent_tokens(
    lm, latents: list[torch.Tensor], sampling: RowSampling, seeds: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per row: (ids [n_b], log-probs [n_b]) of the tokens its latents decode to, drawn as the row draws its
    token t (its sampling [b], seed [b] and counter t: greedy is the argmax, and unchanged latents give back the
    attempt's tokens), the log-probs as the trace records them."""
    sizes = [len(z_b) for z_b in latents]
    owner = torch.arange(len(latents)).repeat_interleave(torch.tensor(sizes))  # [N] row of each position
    counters = torch.cat([torch.arange(n) for n in sizes])  # [N] the step each position was in the attempt
    logits = lm.lm_head(torch.cat(latents).to(next(lm.lm_head.parameters()).dtype)).float()  # [N, V]
    own = sampling.take(owner.to(sampling.temperature.device))
    ids, logprobs = sample_tokens(logits, own, seeds[owner].to(logits.device), counters.to(logits.device))
    return list(zip(ids.split(sizes), logprobs.split(sizes), strict=True))


@register_decoder("latentseek")
class LatentSeek(Decoder):
    """`verifier` (constructor argument or attribute): the function `reward: verifier` calls."""

    config_cls = LatentSeekConfig

    def __init__(self, config: LatentSeekConfig, verifier: Verifier | None = None):
        super().__init__(config)
        self.verifier = verifier
        if config.reward == "oracle":
            self.name = f"{type(self).name}(oracle)"  # every result says that the labels were read

    def _check_reward(self, context: DecodeContext) -> None:
        if self.config.reward == "oracle" and context.references is None:
            raise ConfigError("reward: 'oracle' needs the reference answers (DecodeContext.references)")
        if self.config.reward == "verifier" and self.verifier is None:
            raise ConfigError("reward: 'verifier' needs a verifier function (LatentSeek(config, verifier=fn))")

    def rewards(self, lm, context: DecodeContext, rows: torch.Tensor, replies: list[str]) -> torch.Tensor:
        """[n] float64 rewards of the replies of the rows `rows` [n]."""
        problems = [row // context.samples for row in rows.tolist()]
        cfg = self.config
        if cfg.reward == "oracle":
            values = [oracle_reward(reply, context.references[p]) for p, reply in zip(problems, replies, strict=True)]
        else:
            questions = context.question_texts(lm.tokenizer)
            asked = [questions[p] for p in problems]
            if cfg.reward == "verifier":
                values = [float(self.verifier(q, reply)) for q, reply in zip(asked, replies, strict=True)]
            else:
                verify = SelfVerification(context.stop_ids, cfg.verify_tokens, cfg.format_pattern, cfg.chat_template)
                values = verify(lm, asked, replies)
        return torch.tensor(values, dtype=torch.float64)

    def generate(self, lm, context: DecodeContext) -> LatentSeekGeneration:
        self._check_reward(context)
        cfg, rows, width = self.config, context.rows, context.max_new_tokens
        policy = TokenPolicy(rows, lm.device, context.stop_ids, width, context.sampling, context.seeds)
        prefix = prefill(lm, context.prompts, context.samples)
        attempt = run_steps(lm, prefix, policy, width, batch_size=rows, keep_hidden=True)
        reply = Trace(attempt.kind.clone(), attempt.tokens.clone(), attempt.logprobs.clone())  # [B, W] kept replies
        everyone = torch.arange(rows)
        reward = self.rewards(lm, context, everyone, self._texts(lm, reply, everyone))  # [B]
        lengths = self._latent_lengths(attempt, context.stop_ids)  # [B]
        dtype = torch.promote_types(attempt.hidden.dtype, torch.float32)
        latents = [attempt.hidden[b, : lengths[b]].to(dtype).clone().requires_grad_() for b in range(rows)]
        tokens = [attempt.tokens[b, : lengths[b]].clone() for b in range(rows)]  # what each row's latents decode to
        optimizer = torch.optim.Adam(latents, lr=cfg.lr)  # one parameter per row: its own moments
        running = (reward <= cfg.reward_threshold) & (lengths > 0)  # [B]
        updates = torch.zeros(rows, dtype=torch.long)
        for _ in range(cfg.iterations):
            active = running.nonzero().squeeze(1)  # [n]
            if active.numel() == 0:
                break
            chosen = active.tolist()
            self._update(lm, optimizer, [latents[b] for b in chosen], [tokens[b] for b in chosen], reward[active])
            updates[active] += 1
            own = context.sampling.take(active.to(context.sampling.temperature.device))
            decoded = latent_tokens(lm, [latents[b] for b in chosen], own, context.seeds[active])
            for b, (ids, _) in zip(chosen, decoded, strict=True):
                tokens[b] = ids
            self._redecode(lm, context, reply, active, decoded)
            reward[active] = self.rewards(lm, context, active, self._texts(lm, reply, active))
            running[active] = reward[active] <= cfg.reward_threshold
        return LatentSeekGeneration(reply, reward, updates, lengths, self.name)

    def _latent_lengths(self, attempt: Trace, stop_ids: list[int]) -> torch.Tensor:
        """[B] optimised positions per row: floor(rho x generated tokens, a final stop not counted), capped."""
        steps = attempt.steps.cpu()  # [B]
        last = attempt.tokens.cpu().gather(1, (steps - 1).clamp(min=0)[:, None])[:, 0]  # [B]
        generated = steps - (torch.isin(last, torch.tensor(stop_ids)) & (steps > 0)).long()
        return torch.floor(generated.double() * self.config.rho).long().clamp(max=self.config.max_latent_tokens)

    @staticmethod
    def _update(lm, optimizer, latents: list[torch.Tensor], tokens: list[torch.Tensor], rewards: torch.Tensor) -> None:
        """One Adam step on the given rows' latents only (the others get no gradient, so Adam skips them)."""
        with torch.enable_grad():
            grads = torch.autograd.grad(policy_loss(lm, latents, tokens, rewards), latents)
        optimizer.zero_grad(set_to_none=True)
        for z, grad in zip(latents, grads, strict=True):
            z.grad = grad
        optimizer.step()

    @torch.no_grad()
    def _redecode(self, lm, context: DecodeContext, reply: Trace, active: torch.Tensor, decoded) -> None:
        """Write into `reply` the rows `active`: their latents' tokens, then a continuation from prompt + them."""
        width, stop = reply.kind.shape[1], torch.tensor(context.stop_ids, device=reply.tokens.device)
        starts, go_on = [], []
        for row, (ids, logprobs) in zip(active.tolist(), decoded, strict=True):
            stops = torch.isin(ids, stop).nonzero()
            n = int(stops[0]) + 1 if len(stops) else len(ids)  # a stop token ends the reply there
            reply.kind[row], reply.tokens[row], reply.logprobs[row] = NONE, lm.pad_id, 0.0
            reply.kind[row, :n], reply.tokens[row, :n], reply.logprobs[row, :n] = TOKEN, ids[:n], logprobs[:n]
            starts.append(n)
            go_on.append(not len(stops) and n < width)
        rows = active[torch.tensor(go_on, dtype=torch.bool)]  # [c] rows that continue
        if rows.numel() == 0:
            return
        begin = torch.tensor(starts)[torch.tensor(go_on, dtype=torch.bool)]  # [c]
        prompts = [
            context.prompts[row // context.samples] + reply.tokens[row, :n].tolist()
            for row, n in zip(rows.tolist(), begin.tolist(), strict=True)
        ]
        sampling = context.sampling.take(rows.to(context.sampling.temperature.device))
        policy = TokenPolicy(len(prompts), lm.device, context.stop_ids, width, sampling, context.seeds[rows])
        policy.generated[:] = begin.to(policy.generated.device)  # the budget and sampling counters go on from x
        more = run_steps(lm, prefill(lm, prompts), policy, width - int(begin.min()), batch_size=len(prompts))
        for i, (row, n) in enumerate(zip(rows.tolist(), begin.tolist(), strict=True)):
            reply.kind[row, n:] = more.kind[i, : width - n]
            reply.tokens[row, n:] = more.tokens[i, : width - n]
            reply.logprobs[row, n:] = more.logprobs[i, : width - n]

    @staticmethod
    def _texts(lm, reply: Trace, rows: torch.Tensor) -> list[str]:
        return [
            lm.tokenizer.decode(reply.tokens[row][reply.kind[row] != NONE].tolist(), skip_special_tokens=True)
            for row in rows.tolist()
        ]
