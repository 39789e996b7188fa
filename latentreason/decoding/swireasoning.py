"""SwiReasoning (arXiv 2510.05069): each row switches between latent thinking (soft inputs) and explicit
thinking (tokens) on the trend of its next-token entropy, with a budget on the switches.

Per row and step, H = entropy of softmax(logits) (unfiltered, temperature 1) and H_ref = H at the row's last
switch (at its first step before any switch). Rows start latent:
    latent -> explicit  as soon as H < H_ref (confidence rose: commit to text)
    explicit -> latent  when H > H_ref after at least `window_size` inputs in explicit mode, never once the
                        row has chosen think_end itself (or been given the final answer prompt)
A latent step feeds sum_i p~_i embed(id_i) over the `latent_top_k` most probable tokens, p renormalised over
them: the paper's p @ E restricted to the tokens that carry its mass (exact when latent_top_k >= the
vocabulary), gathered from `lm.embed`, never a dense product with the embedding matrix. An explicit step
feeds the token sampled with the context's sampling. A token made only of `math_chars` (digits, operators)
is fed as text in either mode. The step that switches feeds a blend instead:
    explicit -> latent  alpha_t * latent + (1 - alpha_t) * embed(think_start[0])
    latent -> explicit  beta_t * latent + (1 - beta_t) * embed(think_end[0])
with alpha_t = alpha0 + (1 - alpha0) * t / max_new_tokens (t the row's own step; beta_t likewise from beta0): the
start and end markers fade out over the budget. A math token overrides the alpha blend, not the beta one.

Switch budget C (`max_switches`, counting latent -> explicit switches): the C-th to 2C-th switches force
think_end instead of the blend (a nudge: the row may think on), the (2C+1)-th forces think_end +
`answer_prompt`, after which the row writes at most `answer_tokens` tokens.

Every step records the sampled token (for a latent step, the one the row would have fed) and its log-prob;
a stop token ends the row in either mode. With latent_top_k 1, alpha0 = beta0 = 1, no budget and greedy
sampling every input is the argmax's embedding: greedy decoding.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from latentreason.config import field
from latentreason.decoding.base import DecodeContext, PolicyDecoder, register_decoder
from latentreason.engine.mixture import topk_mixture
from latentreason.engine.steps import StepChoice, StepView
from latentreason.errors import ConfigError

MATH_CHARS = "0123456789+-*/^=<>()[]{}"


@dataclass
class SwiReasoningConfig:
    window_size: int = field(512, help="inputs in explicit mode before a switch back to latent is allowed")
    alpha0: float = field(
        1.0, help="weight of the latent input against embed(think_start) at an explicit->latent switch at step 0"
    )
    beta0: float = field(
        0.7, help="weight of the latent input against embed(think_end) at a latent->explicit switch at step 0"
    )
    max_switches: int | None = field(
        None, help="switch budget C: switches C..2C force think_end, the next think_end + answer_prompt (None: off)"
    )
    answer_prompt: str = field("\n\nThe final answer is", help="text forced after think_end when 2C is exceeded")
    answer_tokens: int = field(32, help="tokens a row may write after answer_prompt before it ends")
    latent_top_k: int = field(100, help="a latent input mixes the k most probable tokens (>= vocabulary: exact)")
    math_chars: str = field(MATH_CHARS, help="tokens made only of these characters are always text ('': none)")

    def __post_init__(self):
        for name in ("alpha0", "beta0"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}: expected in [0, 1], got {getattr(self, name)}")
        for name, low in (("window_size", 0), ("answer_tokens", 1), ("latent_top_k", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name}: expected >= {low}, got {getattr(self, name)}")
        if self.max_switches is not None and self.max_switches < 0:
            raise ConfigError(f"max_switches: expected >= 0 (or none for no budget), got {self.max_switches}")


_MATH_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {(chars, vocab): mask}


def math_tokens(tokenizer, chars: str, vocab: int, device) -> torch.Tensor:
    """[vocab] bool: tokens whose text, without surrounding spaces, is made only of `chars`. Decoding the
    vocabulary takes about 0.5 s for 49k tokens, so each tokenizer's mask is kept while the tokenizer lives."""
    masks = _MATH_TOKENS.setdefault(tokenizer, {})
    if (chars, vocab) not in masks:
        masks[(chars, vocab)] = _math_tokens(tokenizer, chars, vocab)
    return masks[(chars, vocab)].to(device)


def _math_tokens(tokenizer, chars: str, vocab: int) -> torch.Tensor:
    allowed = set(chars)
    texts = [text.strip() for text in tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab))])]
    flags = [bool(text) and set(text) <= allowed for text in texts]
    flags += [False] * (vocab - len(flags))  # rows past the tokenizer (padding of the embedding matrix)
    return torch.tensor(flags, dtype=torch.bool)


def anneal(start: float, t: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[n] float64: start at step 0, rising linearly to 1 at each row's `steps` (t, steps: [n])."""
    return start + (1 - start) * t.double() / steps.clamp(min=1).double()


def blend(weight: torch.Tensor, soft: torch.Tensor, marker: torch.Tensor) -> torch.Tensor:
    """[n, d] weight * soft + (1 - weight) * marker, per row (weight: [n] float64, cast as a Python scalar is)."""
    w = weight[:, None]  # [n, 1]
    return w.to(soft.dtype) * soft + (1 - w).to(soft.dtype) * marker.to(soft.dtype)


def switches(
    latent: torch.Tensor, entropy: torch.Tensor, reference: torch.Tensor, stay: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(to_explicit [b], to_latent [b]): the switch rule on the rows' modes, entropies, H_ref and inputs in
    their current mode."""
    to_explicit = latent & (entropy < reference)
    to_latent = ~latent & (entropy > reference) & (stay >= window)
    return to_explicit, to_latent


class SwiReasoningPolicy:
    # engine.slots: rows may join a running batch (serving), so each keeps its own step count and horizon
    row_state = ("text", "latent", "reference", "stay", "switched", "locked", "answer_left", "t", "horizon")

    def __init__(self, lm, config: SwiReasoningConfig, context: DecodeContext):
        rows, device = context.rows, lm.device
        self.lm, self.config = lm, config
        self.t = torch.zeros(rows, dtype=torch.long, device=device)  # [B] steps the row has taken
        self.horizon = torch.full((rows,), context.max_new_tokens, dtype=torch.long, device=device)  # [B] anneal end
        self.text = context.token_policy(lm)
        self.think_end = context.think_end
        answer = lm.tokenizer(config.answer_prompt, add_special_tokens=False)["input_ids"]
        self.final = context.think_end + answer  # forced when the budget runs out
        markers = lm.embed(torch.tensor([context.think_start[0], context.think_end[0]], device=device))  # [2, d]
        self.start_embed, self.end_embed = markers[0], markers[1]
        self.math = math_tokens(lm.tokenizer, config.math_chars, lm.lm_head.weight.shape[0], device)  # [V]
        self.latent = torch.ones(rows, dtype=torch.bool, device=device)  # [B] mode: latent or explicit
        self.reference = torch.zeros(rows, device=device)  # [B] H_ref: entropy at the last switch
        self.stay = torch.zeros(rows, dtype=torch.long, device=device)  # [B] inputs since the last switch
        self.switched = torch.zeros(rows, dtype=torch.long, device=device)  # [B] latent -> explicit switches
        self.locked = torch.zeros(rows, dtype=torch.bool, device=device)  # [B] explicit for good
        self.answer_left = torch.zeros(rows, dtype=torch.long, device=device)  # [B] after answer_prompt (0: off)

    def step(self, view: StepView) -> StepChoice:
        cfg, rows = self.config, view.rows
        forced = view.queue.pending(rows)  # [b] this step's input is text queued earlier
        entropy = view.entropy  # [b]
        ids, logprobs, finished = self.text.choose(view.logits, rows)  # [b] each
        counting = (self.answer_left[rows] > 0) & ~forced  # [b] a token of the final answer
        self.answer_left[rows] -= counting.long()
        finished = finished | (counting & (self.answer_left[rows] == 0))
        # The row's own think_end ends thinking (its other tokens, if any, are forced).
        ends = (ids == self.think_end[0]) & ~forced & ~self.locked[rows]  # [b]
        if len(self.think_end) > 1 and bool(ends.any()):
            view.force(ends.nonzero().squeeze(1), self.think_end)
        latent, t = self.latent[rows], self.t[rows]  # [b] each
        first = t == 0  # [b] the row's first H_ref; no switch yet
        self.reference[rows] = torch.where(first, entropy, self.reference[rows])
        to_explicit, to_latent = switches(latent, entropy, self.reference[rows], self.stay[rows], cfg.window_size)
        free = ~forced & ~self.locked[rows] & ~ends & ~first
        to_explicit, to_latent = to_explicit & free, to_latent & free
        self.t[rows] += 1
        switched = to_explicit | to_latent
        latent = (latent | to_latent) & ~to_explicit & ~ends
        self.latent[rows] = latent
        self.locked[rows] |= ends
        self.reference[rows] = torch.where(switched, entropy, self.reference[rows])
        self.stay[rows] = torch.where(switched, 1, self.stay[rows] + 1)
        self.switched[rows] += to_explicit.long()
        budget = self.spend_budget(view, to_explicit & ~finished)  # [b] forced from this step on (a stop wins)
        is_embed = ((latent & ~self.math[ids]) | to_explicit) & ~forced & ~budget  # [b]
        embeds = view.hidden.new_zeros(view.hidden.shape)  # [b, d]
        at = is_embed.nonzero().squeeze(1)  # [n]
        if at.numel():
            soft = topk_mixture(self.lm.embed, view.logits[at], cfg.latent_top_k).to(embeds.dtype)  # [n, d]
            horizon = self.horizon[rows[at]]  # [n]
            alpha, beta = anneal(cfg.alpha0, t[at], horizon), anneal(cfg.beta0, t[at], horizon)  # [n] each
            start = blend(alpha, soft, self.start_embed)  # [n, d]
            end = blend(beta, soft, self.end_embed)  # [n, d]
            soft = torch.where(to_latent[at, None], start, soft)
            embeds[at] = torch.where(to_explicit[at, None], end, soft)
        return StepChoice(ids, embeds, is_embed, logprobs, finished)

    def spend_budget(self, view: StepView, to_explicit: torch.Tensor) -> torch.Tensor:
        """Force think_end at switches C..2C and the final answer prompt past 2C; [b] the rows forced."""
        budget = self.config.max_switches
        if budget is None or not bool(to_explicit.any()):
            return torch.zeros_like(to_explicit)
        count = self.switched[view.rows]  # [b]
        nudge = to_explicit & (count >= budget) & (count <= 2 * budget)
        final = to_explicit & (count > 2 * budget)
        view.force(nudge.nonzero().squeeze(1), self.think_end)
        view.force(final.nonzero().squeeze(1), self.final)
        done = view.rows[final]
        self.locked[done] = True
        self.answer_left[done] = self.config.answer_tokens
        return nudge | final


@register_decoder("swireasoning")
class SwiReasoning(PolicyDecoder):
    config_cls = SwiReasoningConfig

    def policy(self, lm, context: DecodeContext) -> SwiReasoningPolicy:
        return SwiReasoningPolicy(lm, self.config, context)
