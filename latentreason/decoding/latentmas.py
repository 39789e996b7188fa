"""LatentMAS (arXiv 2511.20639): a sequential team of agents that share one KV cache as working memory and
pass latent thoughts instead of text.

Each agent is a prompt template; `{prompt}` in it is replaced by the row's prompt ids (the problem as the
harness formatted it), the text around it is tokenized piece by piece. Agent by agent, on one cache:
    1. the agent's prompt is appended (one call for the batch; rows' segments differ in length, so each
       segment is left-padded on its own and its pads are blanked in the attention mask: pads in the
       middle of the cache, positions counted from the mask so they never shift a row)
    2. a non-final agent then takes `latent_steps` latent steps: the last hidden state h becomes the next
       input e = h W_a, rescaled to the mean input-embedding norm (`alignment.py`); nothing is decoded
    3. the final agent decodes the answer with the context's sampling (TokenPolicy)
The trace holds each non-final agent's latent steps (EMBED, recording their top-1 token) then the answer
(TOKEN); the agents' prompts are context, not steps. With latent_steps 0 the result is plain decoding of
the agents' prompts concatenated. The latent phase runs once per problem and its cache is repeated for
`samples`, since it draws nothing at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.decoding.alignment import Alignment, alignment_for
from latentreason.decoding.base import DecodeContext, Decoder, Generation, register_decoder
from latentreason.engine.batch import left_pad
from latentreason.engine.forward import forward_step, new_cache
from latentreason.engine.steps import Prefix, StepChoice, StepView, Trace, run_steps
from latentreason.errors import ConfigError

PLACEHOLDER = "{prompt}"
# The sequential setting of the paper: planner -> critic -> refiner -> solver (the reference's "judger").
# The role text follows the prompt, so with a chat template it opens the assistant's turn.
DEFAULT_AGENTS = [
    PLACEHOLDER + "I am the planner. I list the steps this problem needs, without working out the final answer.\nPlan:",
    PLACEHOLDER + "I am the critic. A plan for this problem comes before me as latent thoughts. I check each of "
    "its steps and say what is wrong or missing.\nCritique:",
    PLACEHOLDER + "I am the refiner. A plan and its critique come before me as latent thoughts. I write the "
    "corrected plan.\nRefined plan:",
    PLACEHOLDER + "I am the solver. The refined plan comes before me as latent thoughts. I follow it and solve "
    "the problem step by step.\n",
]


@dataclass
class LatentMASConfig:
    agents: list[str] = field(
        DEFAULT_AGENTS,
        help=f"the agents' prompt templates in order, the last one decodes; {PLACEHOLDER} is replaced by the "
        "row's prompt (default: planner, critic, refiner, solver)",
    )
    latent_steps: int = field(20, help="latent steps m of each non-final agent (0-80 in the paper, tuned per task)")
    realign: bool = field(True, help="latent input = h W_a (ridge alignment); false: h itself, rescaled alike")
    ridge: float = field(1e-5, help="lambda of the ridge alignment W_a = (W_out^T W_out + lambda I)^-1 W_out^T W_in")

    def __post_init__(self):
        if not self.agents:
            raise ConfigError("agents: expected at least one prompt template")
        for i, agent in enumerate(self.agents):
            if not isinstance(agent, str) or not agent:
                raise ConfigError(f"agents[{i}]: expected a non-empty string, got {agent!r}")
        if not any(PLACEHOLDER in agent for agent in self.agents):
            raise ConfigError(f"agents: no template contains {PLACEHOLDER}, so no agent would see the problem")
        if self.latent_steps < 0:
            raise ConfigError(f"latent_steps: expected >= 0, got {self.latent_steps}")
        if not self.ridge > 0:
            raise ConfigError(f"ridge: expected > 0, got {self.ridge}")


def agent_prompt(tokenizer, template: str, prompt: list[int]) -> list[int]:
    """The ids of one agent's prompt for one row: the template's text pieces tokenized, `prompt` between."""
    pieces = [
        tokenizer(text, add_special_tokens=False)["input_ids"] if text else [] for text in template.split(PLACEHOLDER)
    ]
    ids = list(pieces[0])
    for piece in pieces[1:]:
        ids += prompt + piece
    return ids


class LatentPolicy:
    """Every step a latent input, the aligned hidden state; the trace records its top-1 token. `last` keeps
    the inputs of the latest step, which `run_steps` chooses but does not feed."""

    def __init__(self, align: Alignment):
        self.align = align
        self.last: torch.Tensor | None = None  # [b, d]

    def step(self, view: StepView) -> StepChoice:
        logp = view.logits.log_softmax(-1)  # [b, V]
        top1 = logp.argmax(-1)  # [b]
        self.last = self.align(view.hidden)  # [b, d]
        is_embed = torch.ones_like(top1, dtype=torch.bool)
        return StepChoice(top1, self.last, is_embed, logp.gather(-1, top1[:, None])[:, 0])


def _append(lm, cache, mask: torch.Tensor, segments: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed each row's segment after what the cache holds; (the grown mask [n, S + L], last hidden [n, d])."""
    batch = left_pad(segments, lm.pad_id)  # each row's pads just before its segment: its last column is real
    mask = torch.cat([mask, batch["attention_mask"].to(mask.device)], dim=1)  # [n, S + L]
    hidden = forward_step(lm, cache, mask, input_ids=batch["input_ids"].to(lm.device))[:, -1]  # [n, d]
    return mask, hidden


def _think(lm, prefix: Prefix, align: Alignment, steps: int) -> tuple[Trace, torch.Tensor, torch.Tensor]:
    """`steps` latent steps from `prefix`, all fed; (their trace, the grown mask, the last hidden [n, d])."""
    policy = LatentPolicy(align)
    trace = run_steps(lm, prefix, policy, steps)
    state = trace.state  # every row: none finishes
    mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((len(state.rows), 1))], dim=1)  # [n, S+1]
    hidden = forward_step(lm, state.cache, mask, inputs_embeds=policy.last[:, None])[:, -1]  # [n, d]
    return trace, mask, hidden


def _concat(traces: list[Trace]) -> Trace:
    """The traces' steps one after the other (rows in the same order in each)."""
    return Trace(
        torch.cat([t.kind for t in traces], dim=1),  # [B, sum S]
        torch.cat([t.tokens for t in traces], dim=1),
        torch.cat([t.logprobs for t in traces], dim=1),
    )


def _repeat(trace: Trace, samples: int) -> Trace:
    return Trace(*(x.repeat_interleave(samples, dim=0) for x in (trace.kind, trace.tokens, trace.logprobs)))


@register_decoder("latentmas")
class LatentMAS(Decoder):
    config_cls = LatentMASConfig

    @torch.no_grad()
    def generate(self, lm, context: DecodeContext) -> Generation:
        cfg = self.config
        align = alignment_for(lm, cfg.ridge, cfg.realign) if cfg.latent_steps else None  # m = 0: not needed
        cache = new_cache(lm)
        mask = torch.zeros((len(context.prompts), 0), dtype=torch.long, device=lm.device)  # [n, 0]
        thoughts = []
        for i, template in enumerate(cfg.agents):
            segments = [agent_prompt(lm.tokenizer, template, prompt) for prompt in context.prompts]
            mask, hidden = _append(lm, cache, mask, segments)
            if i < len(cfg.agents) - 1 and cfg.latent_steps:
                trace, mask, hidden = _think(lm, Prefix(cache, mask, hidden), align, cfg.latent_steps)
                thoughts.append(_repeat(trace, context.samples))
        if context.samples > 1:
            cache.batch_repeat_interleave(context.samples)
            mask, hidden = mask.repeat_interleave(context.samples, 0), hidden.repeat_interleave(context.samples, 0)
        answer = run_steps(
            lm, Prefix(cache, mask, hidden), context.token_policy(lm), context.max_new_tokens, batch_size=context.rows
        )
        return Generation(_concat([*thoughts, answer]))
