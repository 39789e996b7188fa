"""The GRPO policy of HRPO (Hybrid Reasoning Policy Optimization, arXiv 2505.18454): a pretrained chat model whose
thinking tokens are fed through learned gates that mix in the step's distribution (engine/hybrid.py).

The actions are the sampled tokens, every one of the reply (log-prob under softmax(logits / temperature)); the
hybrid inputs are no actions, they are deterministic given the tokens and h^. What is recorded and what carries
gradient:
  recorded    each step's token and, at each step fed as a hybrid input, h^: the normalised top-k mixture of
              the distribution that token was drawn from, under the weights that sampled it;
  recomputed  in one teacher-forced call: e = embed(token), the gates r, i, a under the current weights, the
              hybrid inputs a * e + sqrt(1 - a^2) * (i * h^) and every token's log-prob.
So W_r, W_i and Lambda get gradient through the log-probs of all the tokens after each hybrid input, as does the
model (LoRA or all of it) through its own calls and e. h^ stays as recorded: recomputing it from the new weights
would change the inputs the later tokens were sampled after and need a call per step; as in the public HRPO
code, it is a constant of the rollout. An unchanged policy recomputes the sampled log-probs (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from latentreason.engine.decode import TokenPolicy
from latentreason.engine.hybrid import HybridThinking
from latentreason.engine.loss import chosen_logprobs
from latentreason.engine.sampling import Sampling
from latentreason.engine.steps import EMBED, NONE, prefill, run_steps
from latentreason.errors import ConfigError
from latentreason.model.hybrid_gates import GATES_HEAD, HybridGates, HybridSettings
from latentreason.rl.policy import ActionLogprobs
from latentreason.rl.rewards import Completion
from latentreason.rl.token_policy import reply_completions, row_seeds, teacher_forced_states, token_only


@dataclass
class HybridRollouts:
    prompts: list[list[int]]  # token ids of each row's chat prompt
    kinds: torch.Tensor  # [B, T] int8: EMBED (the token was fed as a hybrid input), TOKEN, or NONE after the end
    tokens: torch.Tensor  # [B, T] each step's sampled token (pad after the row's last step)
    mixtures: torch.Tensor  # [B, T, d] the h^ fed at each hybrid step (zeros elsewhere)
    ratios: torch.Tensor  # [B, T] mean over d of a at each hybrid step, as sampled
    lengths: torch.Tensor  # [B] steps, the stop token included
    old: ActionLogprobs
    ref: ActionLogprobs | None = None

    @property
    def hybrid_mask(self) -> torch.Tensor:
        return self.kinds == EMBED  # [B, T]

    @property
    def token_mask(self) -> torch.Tensor:
        return self.kinds != NONE  # [B, T] every step's token is an action

    @property
    def action_mask(self) -> torch.Tensor:
        return self.token_mask  # as ActionLogprobs.flat(): token log-probs only

    def select(self, rows: torch.Tensor) -> HybridRollouts:
        """The rollouts at `rows` [M], trimmed to their longest."""
        t = int(self.lengths[rows].max()) if len(rows) else 0
        old, ref = (None if lp is None else token_only(lp.token[rows, :t]) for lp in (self.old, self.ref))
        prompts = [self.prompts[i] for i in rows.tolist()]
        kinds, tokens, mixtures = self.kinds[rows, :t], self.tokens[rows, :t], self.mixtures[rows, :t]
        return HybridRollouts(prompts, kinds, tokens, mixtures, self.ratios[rows, :t], self.lengths[rows], old, ref)

    def completions(self, tokenizer, answer_mode: str) -> list[Completion]:
        return reply_completions(tokenizer, self.tokens, self.lengths, answer_mode)

    def metrics(self) -> dict:
        hybrid = self.hybrid_mask
        ratio = float(self.ratios[hybrid].mean()) if hybrid.any() else 1.0
        return {
            "completions/mean_length": float(self.lengths.float().mean()),
            "hybrid/thinking_steps": float(hybrid.sum(1).float().mean()),
            "hybrid/embed_ratio": ratio,  # the mean a: 1 is pure token embeddings (the reference's embeds_ratio)
        }


def attach_gates(lm, config) -> HybridGates:
    """The model's gates: those it was saved with (a resumed or further trained HRPO model), else new ones drawn
    from the config's seed, so a resumed run's frozen starting copy gets the gates the run started with."""
    settings = HybridSettings(config.soft_top_k, config.temperature, config.answer_marker)
    if GATES_HEAD in lm.heads:
        gates = lm.heads[GATES_HEAD]
        if gates.settings != settings:
            raise ConfigError(
                f"fields 'soft_top_k', 'temperature', 'answer_marker': the model's gates were trained with "
                f"{asdict(gates.settings)}, the config asks for {asdict(settings)} (HRPO's inputs would change meaning)"
            )
        return gates
    gates = lm.add_head(GATES_HEAD, "hybrid_gates", **asdict(settings))
    gates.reset(config.gate_init_min, config.gate_init_max, torch.Generator().manual_seed(config.seed))
    return gates


class HybridPolicy:
    """Samples and scores HRPO rollouts of a chat model (`prompt`: a PromptBuilder) or of a model trained here with
    a text method (a LayoutPrompt) under an RLConfig whose think_inputs is hybrid; the gates become a head of `lm`
    (saved with it)."""

    def __init__(self, lm, prompt, config):
        # No answer_marker set: the prompt's own (\boxed for a chat prompt, ### for a model trained here).
        config = replace(config, answer_marker=config.answer_marker or prompt.answer_marker)
        self.lm, self.prompt, self.config = lm, prompt, config
        self.temperature, self.max_completion_length = config.temperature, config.max_completion_length
        self.stop_ids = prompt.stop_ids()
        self.gates = attach_gates(lm, config)

    def prompts(self, problems) -> list[list[int]]:
        return [self.prompt.ids(p.question) for p in problems]

    def optimizer_groups(self) -> list[dict]:
        """AdamW groups of the gates and of Lambda at their own learning rates (weight decay as the model's)."""
        cfg, gates = self.config, self.gates
        return [
            {"params": gates.gate_parameters, "lr": cfg.gate_learning_rate, "weight_decay": cfg.weight_decay},
            {"params": [gates.Lambda], "lr": cfg.lambda_learning_rate, "weight_decay": cfg.weight_decay},
        ]

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], generator: torch.Generator | None = None) -> HybridRollouts:
        lm, rows, steps_max = self.lm, len(prompts), self.max_completion_length
        seeds = row_seeds(rows, generator, lm.device)
        tokens = TokenPolicy(rows, lm.device, self.stop_ids, steps_max, Sampling(temperature=self.temperature), seeds)
        steps = HybridThinking(lm, self.gates, tokens, rows, record_steps=steps_max)
        trace = run_steps(lm, prefill(lm, prompts), steps, steps_max, rows)
        lengths = trace.steps  # [B]
        t = int(lengths.max()) if lengths.numel() else 0
        old = token_only(trace.logprobs[:, :t].float())
        mixtures, ratios = steps.mixtures[:, :t], steps.ratios[:, :t]
        return HybridRollouts(prompts, trace.kind[:, :t], trace.tokens[:, :t], mixtures, ratios, lengths, old)

    def logprobs(self, rollouts: HybridRollouts) -> ActionLogprobs:
        """The tokens' log-probs under the current weights and gates, in one teacher-forced call (with grad)."""
        lm, fed_tokens = self.lm, rollouts.tokens[:, :-1]  # [B, T-1] the last step is never fed
        token_embeds = lm.embed(fed_tokens)  # [B, T-1, d]
        # The gates run at every position, so they take part in every update's graph (DDP wants each parameter).
        hybrid, _ = self.gates(token_embeds, rollouts.mixtures[:, :-1])  # [B, T-1, d]
        fed = torch.where(rollouts.hybrid_mask[:, :-1, None], hybrid, token_embeds)  # [B, T-1, d]
        predicting = teacher_forced_states(lm, rollouts.prompts, fed, rollouts.lengths)  # [B, T, d]
        token = chosen_logprobs(lm.lm_head, predicting, rollouts.tokens, rollouts.token_mask, self.temperature)
        return token_only(token)
